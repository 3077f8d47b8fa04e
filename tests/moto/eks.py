"""What EKS answers about who may join a cluster, which moto 5.2.5 lacks (see proxy.py): a
cluster's authentication mode, its access entries, and its cluster security group.

From the EKS API reference and user guide:
- DescribeCluster carries `accessConfig.authenticationMode`; a cluster created through the API
  without one is CONFIG_MAP (CreateAccessConfigRequest). UpdateClusterConfig moves it only
  forward: CONFIG_MAP -> API_AND_CONFIG_MAP -> API ("switching is one-way").
- Access entries (CreateAccessEntry, DescribeAccessEntry, ListAccessEntries, DeleteAccessEntry)
  exist only while the mode includes API (InvalidRequestException otherwise); the principal must
  be an existing IAM role or user of the account (InvalidParameterException); a node type
  (EC2_LINUX, EC2_WINDOWS, FARGATE_LINUX, HYBRID_LINUX) needs a role and takes no username or
  groups; one entry per principal (ResourceInUseException); an absent one is
  ResourceNotFoundException (404).
- `resourcesVpcConfig.endpointPublicAccess` / `endpointPrivateAccess`: true / false unless the
  cluster was made otherwise (VpcConfigRequest defaults).
- `resourcesVpcConfig.clusterSecurityGroupId`: the security group EKS makes with the cluster,
  which admits all traffic from its own members only ("View Amazon EKS security group
  requirements for clusters").
Errors are restJson1: the status code, `x-amzn-ErrorType` and a JSON `message`.
"""
import json
import re
import threading
import time
import urllib.parse

MODES = ["CONFIG_MAP", "API_AND_CONFIG_MAP", "API"]
NODE_TYPES = {"EC2_LINUX", "EC2_WINDOWS", "FARGATE_LINUX", "HYBRID_LINUX"}
TYPES = NODE_TYPES | {"STANDARD", "EC2", "HYPERPOD_LINUX"}
ACCOUNT = "123456789012"


class EksAccess:
    def __init__(self, moto_ec2, moto_iam):
        self.moto_ec2 = moto_ec2        # (region, [(k, v)]) -> XML bytes
        self.moto_iam = moto_iam        # ([(k, v)]) -> (status, XML bytes)
        self.lock = threading.Lock()
        self.modes = {}                 # (region, cluster) -> authentication mode
        self.entries = {}               # (region, cluster) -> {principal ARN: entry}
        self.groups = {}                # (region, cluster) -> cluster security group ID
        self.apis = None                # kubeapi.ClusterApis, once the proxy made it
        self.policies = {}              # (region, cluster, principal ARN) -> {policy ARN: association}

    @staticmethod
    def action(method, path):
        """The IAM action name of an access call, or None."""
        parts = [p for p in path.split("/") if p]
        if parts[:1] != ["clusters"] or len(parts) < 3:
            return None
        if parts[2] == "update-config" and method == "POST":
            return "UpdateClusterConfig"
        if parts[2] != "access-entries":
            return None
        if len(parts) == 3:
            return {"POST": "CreateAccessEntry", "GET": "ListAccessEntries"}.get(method)
        if len(parts) == 4:
            return {"GET": "DescribeAccessEntry", "DELETE": "DeleteAccessEntry"}.get(method)
        if len(parts) == 5 and parts[4] == "access-policies":
            return {"POST": "AssociateAccessPolicy", "GET": "ListAssociatedAccessPolicies"}.get(method)
        if len(parts) == 6 and parts[4] == "access-policies" and method == "DELETE":
            return "DisassociateAccessPolicy"
        return None

    @staticmethod
    def error(status, code, message):
        return status, [("x-amzn-ErrorType", code), ("Content-Type", "application/json")], \
            json.dumps({"message": message}).encode()

    @staticmethod
    def ok(obj):
        return 200, [("Content-Type", "application/json")], json.dumps(obj).encode()

    def mode(self, region, cluster):
        with self.lock:
            return self.modes.get((region, cluster), "CONFIG_MAP")

    def security_group(self, region, cluster):
        """The cluster security group, made (as EKS makes it with the cluster) when first asked."""
        with self.lock:
            sg = self.groups.get((region, cluster))
        if sg is not None:
            return sg
        name = "eks-cluster-sg-%s-%010d" % (cluster, int(time.time() * 1000) % 10 ** 10)
        xml = self.moto_ec2(region, [
            ("Action", "CreateSecurityGroup"), ("GroupName", name),
            ("GroupDescription", "EKS created security group applied to ENI that is attached to EKS Control Plane master nodes, as well as any managed workloads."),
            ("TagSpecification.1.ResourceType", "security-group"),
            ("TagSpecification.1.Tag.1.Key", "kubernetes.io/cluster/%s" % cluster),
            ("TagSpecification.1.Tag.1.Value", "owned")]).decode()
        sg = re.search(r"<groupId>([^<]+)</groupId>", xml).group(1)
        # Everything from its own members, nothing from anyone else.
        self.moto_ec2(region, [("Action", "AuthorizeSecurityGroupIngress"), ("GroupId", sg),
                               ("IpPermissions.1.IpProtocol", "-1"),
                               ("IpPermissions.1.Groups.1.GroupId", sg)])
        with self.lock:
            self.groups.setdefault((region, cluster), sg)
            return self.groups[(region, cluster)]

    def describe(self, region, cluster, data):
        """moto's DescribeCluster answer with what EKS also says."""
        try:
            obj = json.loads(data)
        except ValueError:
            return data
        c = obj.get("cluster")
        if not isinstance(c, dict):
            return data
        if self.apis is not None:
            # The cluster's own Kubernetes API server (kubeapi.py) and its CA.
            c["endpoint"], ca = self.apis.endpoint(region, cluster)
            c["certificateAuthority"] = {"data": ca}
        c["accessConfig"] = {"authenticationMode": self.mode(region, cluster),
                             "bootstrapClusterCreatorAdminPermissions": True}
        vpc = c.setdefault("resourcesVpcConfig", {})
        vpc["clusterSecurityGroupId"] = self.security_group(region, cluster)
        # What a cluster made without them has (CreateCluster, VpcConfigRequest: the public
        # endpoint is on and the private one off by default); moto echoes only what was asked.
        vpc.setdefault("endpointPublicAccess", True)
        vpc.setdefault("endpointPrivateAccess", False)
        return json.dumps(obj).encode()

    def policies_of(self, region, cluster, principal):
        """The access policies associated with an entry."""
        with self.lock:
            return list(self.policies.get((region, cluster, principal), {}).values())

    def access_policies(self, action, region, cluster, parts, req):
        """Access policy associations (API reference AssociateAccessPolicy,
        ListAssociatedAccessPolicies, DisassociateAccessPolicy; user guide "Associate access
        policies with access entries"): only a STANDARD entry takes them; a policy is associated
        once per entry, and associating it again replaces its scope; a namespace scope names
        its namespaces."""
        principal = parts[3]
        with self.lock:
            entry = self.entries.get((region, cluster), {}).get(principal)
        if entry is None:
            return self.error(404, "ResourceNotFoundException",
                              "The specified principalArn could not be found. You can view your available access entries with 'list-access-entries'.")
        key = (region, cluster, principal)
        if action == "ListAssociatedAccessPolicies":
            return self.ok({"clusterName": cluster, "principalArn": principal,
                            "associatedAccessPolicies": self.policies_of(region, cluster, principal)})
        if action == "DisassociateAccessPolicy":
            policy = parts[5]
            with self.lock:
                gone = self.policies.get(key, {}).pop(policy, None)
            if gone is None:
                return self.error(404, "ResourceNotFoundException", "The specified policy is not associated with this access entry.")
            return self.ok({})
        if entry["type"] != "STANDARD":
            return self.error(400, "InvalidParameterException",
                              'This operation can only be performed on Access Entries with a type of "STANDARD".')
        policy = req.get("policyArn", "")
        if not re.fullmatch(r"arn:aws:eks::aws:cluster-access-policy/[A-Za-z0-9]+", policy):
            return self.error(400, "InvalidParameterException", "The specified policyArn is invalid: %s" % policy)
        scope = req.get("accessScope") or {}
        kind = scope.get("type")
        namespaces = scope.get("namespaces") or []
        if kind not in ("cluster", "namespace") or (kind == "namespace") != bool(namespaces):
            return self.error(400, "InvalidParameterException",
                              "accessScope must be of type cluster, or of type namespace with namespaces")
        now = time.time()
        with self.lock:
            held = self.policies.setdefault(key, {})
            was = held.get(policy)
            held[policy] = {"policyArn": policy, "accessScope": {"type": kind, "namespaces": namespaces},
                            "associatedAt": was["associatedAt"] if was else now, "modifiedAt": now}
            out = held[policy]
        return self.ok({"clusterName": cluster, "principalArn": principal, "associatedAccessPolicy": out})

    def principal_exists(self, arn):
        m = re.fullmatch(r"arn:aws:iam::(\d{12}):(role|user)/(?:.*/)?([\w+=,.@-]+)", arn)
        if m is None or m.group(1) != ACCOUNT:
            return None
        kind, name = m.group(2), m.group(3)
        status, _ = self.moto_iam([("Action", "GetRole" if kind == "role" else "GetUser"),
                                   ("RoleName" if kind == "role" else "UserName", name)])
        return kind if status == 200 else None

    def handle(self, method, path, body, region, cluster_exists):
        """(status, headers, body) for an access call, or None for anything else."""
        action = self.action(method, path)
        if action is None:
            return None
        parts = [urllib.parse.unquote(p) for p in urllib.parse.urlparse(path).path.split("/") if p]
        cluster = parts[1]
        if not cluster_exists(cluster):
            return self.error(404, "ResourceNotFoundException", "No cluster found for name: %s." % cluster)
        key = (region, cluster)
        req = json.loads(body or b"{}") if method == "POST" else {}
        if action == "UpdateClusterConfig":
            want = (req.get("accessConfig") or {}).get("authenticationMode")
            if want is None:
                return self.error(400, "InvalidParameterException", "No changes requested.")
            if want not in MODES:
                return self.error(400, "InvalidParameterException", "Unsupported authentication mode: %s" % want)
            now = self.mode(region, cluster)
            if MODES.index(want) < MODES.index(now):
                return self.error(400, "InvalidParameterException",
                                  "Unsupported authentication mode update from %s to %s" % (now, want))
            if want == now:
                return self.error(400, "InvalidParameterException", "Cluster already at desired configuration")
            with self.lock:
                self.modes[key] = want
            return self.ok({"update": {"id": "upd-%d" % int(time.time() * 1000), "status": "Successful",
                                       "type": "AccessConfigUpdate",
                                       "params": [{"type": "AuthenticationMode", "value": want}]}})
        if self.mode(region, cluster) == "CONFIG_MAP":
            return self.error(400, "InvalidRequestException",
                              "The cluster's authentication mode must be set to one of [API, API_AND_CONFIG_MAP] to perform this operation.")
        with self.lock:
            entries = self.entries.setdefault(key, {})
        if action == "ListAccessEntries":
            with self.lock:
                return self.ok({"accessEntries": sorted(entries)})
        if action in ("AssociateAccessPolicy", "ListAssociatedAccessPolicies", "DisassociateAccessPolicy"):
            return self.access_policies(action, region, cluster, parts, req)
        if action in ("DescribeAccessEntry", "DeleteAccessEntry"):
            principal = parts[3]
            with self.lock:
                entry = entries.get(principal)
                if entry is not None and action == "DeleteAccessEntry":
                    del entries[principal]
                    self.policies.pop((region, cluster, principal), None)
            if entry is None:
                return self.error(404, "ResourceNotFoundException",
                                  "The specified access entry resource could not be found.")
            return self.ok({"accessEntry": entry} if action == "DescribeAccessEntry" else {})
        # CreateAccessEntry
        principal = req.get("principalArn", "")
        kind = req.get("type", "STANDARD")
        if kind not in TYPES:
            return self.error(400, "InvalidParameterException", "Unsupported access entry type: %s" % kind)
        found = self.principal_exists(principal)
        if found is None:
            return self.error(400, "InvalidParameterException",
                              "The specified principalArn is invalid: invalid principal")
        if kind in NODE_TYPES and (found != "role" or req.get("username") or req.get("kubernetesGroups")):
            return self.error(400, "InvalidParameterException",
                              "An access entry of type %s needs an IAM role and takes no username or Kubernetes groups" % kind)
        now = time.time()
        entry = {"clusterName": cluster, "principalArn": principal, "type": kind,
                 "kubernetesGroups": req.get("kubernetesGroups") or [],
                 "username": req.get("username") or ("system:node:{{EC2PrivateDNSName}}" if kind == "EC2_LINUX" else principal),
                 "accessEntryArn": "arn:aws:eks:%s:%s:access-entry/%s/%s" % (region, ACCOUNT, cluster, principal.rsplit("/", 1)[-1]),
                 "createdAt": now, "modifiedAt": now, "tags": req.get("tags") or {}}
        with self.lock:
            if principal in entries:
                return self.error(409, "ResourceInUseException",
                                  "The specified access entry resource is already in use on this cluster.")
            entries[principal] = entry
        return self.ok({"accessEntry": entry})
