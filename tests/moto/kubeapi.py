"""A stand-in for each EKS cluster's Kubernetes API server, for the parts bake uses: reading a
node, and running a pod on it. moto 5.2.5 has no Kubernetes API at all. Each cluster gets its own HTTPS endpoint with its
own CA (DescribeCluster's `endpoint` and `certificateAuthority.data`).

Authentication, as EKS does it (kubernetes-sigs/aws-iam-authenticator pkg/token/token.go,
tokenVerifier.Verify; EKS user guide "Grant IAM users access to Kubernetes with EKS access
entries"):
- a bearer token `k8s-aws-v1.` + unpadded URL-safe base64 of a presigned STS GetCallerIdentity
  URL, at most 4096 bytes; https, host `sts.amazonaws.com` or `sts.<region>.amazonaws.com`, path
  `/`; only the allowed query keys (action, version, x-amz-algorithm, x-amz-credential,
  x-amz-date, x-amz-expires, x-amz-security-token, x-amz-signature, x-amz-signedheaders), each
  once; Action=GetCallerIdentity; x-k8s-aws-id among the signed headers; X-Amz-Expires an
  integer 0..900; X-Amz-Date no more than 15 minutes old;
- the server sends the request to STS with `x-k8s-aws-id: <cluster name>`, so STS's signature
  check binds the token to this cluster. moto does not check signatures, so the stand-in checks
  the SigV4 signature itself, with the emulator account's one secret ("testing", every key the
  tests use), then asks moto's STS who the key is (moto reads the service and key of a request
  only from an Authorization header, so the query's credential is handed to it in one);
- the ARN is canonicalized (arn.Canonicalize: an assumed-role session is its role) and matched
  to an access entry path-stripped and case-insensitively (mapper/dynamicfile). A principal with
  no entry is not authenticated: 401 (the webhook denies, the API server says Unauthorized).
  aws-auth is not emulated: in CONFIG_MAP mode nobody gets in.
Authorization: `nodes` are cluster-scoped, and of the EKS access policies only
AmazonEKSClusterAdminPolicy and AmazonEKSAdminViewPolicy cover them (access policy reference);
they must be associated at cluster scope. Anything else: 403 Forbidden. Errors are
metav1.Status objects as k8s.io/apimachinery pkg/api/errors makes them.

Nodes register as the kubelet registers them, for instances launched with join user data
(nodeadm NodeConfig or /etc/eks/bootstrap.sh): named after the instance's private DNS name
(nodeadm and bootstrap do so), with the taints and labels of --register-with-taints and
--node-labels, once the instance has booted (agent_online_after_s), and only if the instance
profile's role has an EC2_LINUX access entry in the cluster (EKS user guide, node IAM role). A
node is NotReady (with the node.kubernetes.io/not-ready taint) until its network is ready,
node_ready_after_s later (-1: never, a CNI that never comes up). An instance that is a real VM
(machines.py) registers once its kubelet is up (kubelet.py). A terminated instance's node goes
away (the cloud node lifecycle controller deletes it).

Pods (the parts bake uses: create, get, log, delete in a namespace every EKS cluster has) are
authorized by the access policies' pod permissions (edit/admin in their scope, cluster admin,
view policies read only), validated and stored as the API server does for the fields checked,
bound to spec.nodeName, and run by the node's kubelet (kubelet.py).
"""
import base64
import datetime
import hashlib
import hmac
import http.server
import ipaddress
import json
import re
import ssl
import tempfile
import threading
import time
import urllib.parse
import urllib.request
import uuid

SECRET = "testing"
ALLOWED = {"action", "version", "x-amz-algorithm", "x-amz-credential", "x-amz-date", "x-amz-expires",
           "x-amz-security-token", "x-amz-signature", "x-amz-signedheaders"}
NODE_READERS = ("AmazonEKSClusterAdminPolicy", "AmazonEKSAdminViewPolicy")
POD_WRITERS = ("AmazonEKSClusterAdminPolicy", "AmazonEKSAdminPolicy", "AmazonEKSEditPolicy")
POD_READERS = ("AmazonEKSAdminViewPolicy", "AmazonEKSViewPolicy")
# The namespaces every EKS cluster has.
NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
TOKEN_MAX = 4096


def status(code, reason, message, details=None):
    """A metav1.Status as the API server writes it."""
    obj = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason}
    if details:
        obj["details"] = details
    obj["code"] = code
    return code, obj


def canonical(arn):
    """arn.Canonicalize: an assumed-role session is its role; IAM users and roles are themselves."""
    m = re.fullmatch(r"arn:(aws[\w-]*):sts::(\d{12}):assumed-role/(.+)/[^/]+", arn)
    if m:
        return "arn:%s:iam::%s:role/%s" % m.groups()
    if re.fullmatch(r"arn:aws[\w-]*:iam::\d{12}:(user|role)/.+", arn):
        return arn
    return None


def strip_path(arn):
    m = re.fullmatch(r"(arn:[^:]+:iam::\d{12}:(?:user|role))/(?:.*/)?([^/]+)", arn)
    return "%s/%s" % m.groups() if m else arn


def sigv4_ok(url, query, cluster):
    """The presigned request's signature, checked as STS checks it (signed with SECRET). A
    presigned request signs an empty payload, or UNSIGNED-PAYLOAD (what botocore presigns)."""
    cred = query["x-amz-credential"].split("/")
    if len(cred) != 5 or cred[4] != "aws4_request":
        return False
    _, day, region, service, _ = cred
    signed = query["x-amz-signedheaders"].lower().split(";")
    headers = {"host": url.netloc, "x-k8s-aws-id": cluster}
    if any(h not in headers for h in signed):
        return False
    pairs = sorted((urllib.parse.quote(k, safe="-_.~"), urllib.parse.quote(v, safe="-_.~"))
                   for k, v in urllib.parse.parse_qsl(url.query, keep_blank_values=True)
                   if k != "X-Amz-Signature")
    canonical_query = "&".join("%s=%s" % kv for kv in pairs)
    canonical_headers = "".join("%s:%s\n" % (h, headers[h]) for h in signed)
    scope = "/".join(cred[1:])
    key = ("AWS4" + SECRET).encode()
    for part in (day, region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    for payload in (hashlib.sha256(b"").hexdigest(), "UNSIGNED-PAYLOAD"):
        creq = "\n".join(["GET", url.path or "/", canonical_query, canonical_headers, ";".join(signed), payload])
        to_sign = "\n".join(["AWS4-HMAC-SHA256", query["x-amz-date"], scope,
                             hashlib.sha256(creq.encode()).hexdigest()])
        if hmac.compare_digest(hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest(),
                               query["x-amz-signature"]):
            return True
    return False


def make_tls(name):
    """A CA and a server certificate for 127.0.0.1 signed by it: (ssl context, CA PEM)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID, ExtendedKeyUsageOID
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kubernetes")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=2))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                        x509.DNSName("kubernetes.default.svc")]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(ca_key, hashes.SHA256()))
    pem = lambda c: c.public_bytes(serialization.Encoding.PEM)
    ca_pem = pem(ca)
    files = tempfile.NamedTemporaryFile("wb", suffix="-%s.pem" % name, delete=False)
    files.write(pem(cert) + key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption()))
    files.close()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(files.name)
    return ctx, ca_pem


class ClusterApis:
    def __init__(self, upstream, eks, moto_iam, log_path, kubelet):
        self.kubelet = kubelet          # kubelet.Kubelet: what runs pods on the nodes
        self.pods = {}                  # (region, cluster) -> {(namespace, name): pod}
        self.pod_seq = 0
        self.upstream = upstream        # moto_server URL
        self.eks = eks                  # eks.EksAccess: modes, entries, associated policies
        self.moto_iam = moto_iam
        self.log_path = log_path
        self.lock = threading.Lock()
        self.servers = {}               # (region, cluster) -> (endpoint, CA PEM)
        self.nodes = {}                 # (region, cluster) -> {name: node record}

    # --- the endpoint of each cluster -------------------------------------------------------
    def endpoint(self, region, cluster):
        """(https endpoint, base64 of the CA PEM) of the cluster's API server, started when
        first asked (EKS makes both with the cluster)."""
        with self.lock:
            if (region, cluster) in self.servers:
                url, ca = self.servers[(region, cluster)]
                return url, base64.b64encode(ca).decode()
        ctx, ca = make_tls(cluster)
        apis = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                self.answer(*apis.request("GET", region, cluster, self.path, self.headers.get("Authorization", ""), b""))

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self.answer(*apis.request(self.command, region, cluster, self.path,
                                          self.headers.get("Authorization", ""), body))

            do_PUT = do_PATCH = do_DELETE = do_POST

            def answer(self, code, obj):
                text = isinstance(obj, bytes)
                data = obj if text else json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "text/plain" if text else "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        url = "https://127.0.0.1:%d" % server.server_address[1]
        with self.lock:
            self.servers.setdefault((region, cluster), (url, ca))
            url, ca = self.servers[(region, cluster)]
        return url, base64.b64encode(ca).decode()

    # --- authentication and authorization ---------------------------------------------------
    def authenticate(self, cluster, header):
        """The canonical principal ARN of a bearer token, or (None, why)."""
        if not header.startswith("Bearer "):
            return None, "no bearer token"
        token = header[len("Bearer "):].strip()
        if len(token) > TOKEN_MAX or not token.startswith("k8s-aws-v1."):
            return None, "not a k8s-aws-v1 token"
        b64 = token[len("k8s-aws-v1."):]
        try:
            raw = base64.urlsafe_b64decode(b64 + "=" * (-len(b64) % 4)).decode()
        except ValueError:
            return None, "token is not base64"
        if "=" in b64:
            return None, "token is padded base64"
        url = urllib.parse.urlparse(raw)
        if url.scheme != "https":
            return None, "unexpected scheme"
        if not re.fullmatch(r"sts(\.[a-z0-9-]+)?\.amazonaws\.com", url.netloc):
            return None, "unexpected hostname %r in pre-signed URL" % url.netloc
        if url.path != "/":
            return None, "unexpected path in pre-signed URL"
        query = {}
        for k, v in urllib.parse.parse_qsl(url.query, keep_blank_values=True):
            if k.lower() in query:
                return None, "duplicate query parameter found: %r" % k
            if k.lower() not in ALLOWED:
                return None, "non-whitelisted query parameter %r" % k
            query[k.lower()] = v
        if query.get("action") != "GetCallerIdentity":
            return None, "unexpected action parameter in pre-signed URL"
        if "x-k8s-aws-id" not in query.get("x-amz-signedheaders", "").lower().split(";"):
            return None, "client did not sign the x-k8s-aws-id header in the pre-signed URL"
        try:
            expires = int(query.get("x-amz-expires", ""))
            assert 0 <= expires <= 900
            date = datetime.datetime.strptime(query["x-amz-date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=datetime.timezone.utc)
        except (ValueError, KeyError, AssertionError):
            return None, "invalid X-Amz-Expires or X-Amz-Date parameter in pre-signed URL"
        if datetime.datetime.now(datetime.timezone.utc) > date + datetime.timedelta(minutes=15):
            return None, "X-Amz-Date parameter is expired (15 minute expiration)"
        if any(k not in query for k in ("x-amz-credential", "x-amz-signature", "x-amz-signedheaders")):
            return None, "the pre-signed URL is not signed"
        if not sigv4_ok(url, query, cluster):
            return None, "sts getCallerIdentity failed: SignatureDoesNotMatch"
        # Who the key is, from moto's STS. moto finds the service and the key of a request only
        # in an Authorization header, so the query's credential is handed to it in one.
        req = urllib.request.Request(self.upstream + "/?" + url.query)
        req.add_header("Host", url.netloc)
        req.add_header("Authorization", "AWS4-HMAC-SHA256 Credential=%s, SignedHeaders=host;x-k8s-aws-id, Signature=%s"
                       % (query["x-amz-credential"], query["x-amz-signature"]))
        req.add_header("x-k8s-aws-id", cluster)
        req.add_header("Accept", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                body = r.read().decode()
        except urllib.error.HTTPError as e:
            return None, "sts getCallerIdentity failed: %d" % e.code
        m = re.search(r"<Arn>([^<]+)</Arn>", body) or re.search(r'"Arn"\s*:\s*"([^"]+)"', body)
        if not m:
            return None, "sts getCallerIdentity failed: no Arn"
        arn = canonical(fix_moto_identity(m.group(1)))
        if arn is None:
            return None, "unrecognized ARN %r" % m.group(1)
        return arn, None

    def entry_of(self, region, cluster, principal):
        """The access entry that holds `principal`, or None (aws-auth is not emulated)."""
        if self.eks.mode(region, cluster) == "CONFIG_MAP":
            return None
        with self.eks.lock:
            entries = list(self.eks.entries.get((region, cluster), {}).values())
        want = strip_path(principal).lower()
        for e in entries:
            if strip_path(e["principalArn"]).lower() == want:
                return e
        return None

    def request(self, method, region, cluster, path, authorization, body):
        principal, why = self.authenticate(cluster, authorization)
        entry = self.entry_of(region, cluster, principal) if principal else None
        self.log({"cluster": cluster, "method": method, "path": path, "principal": principal, "why": why,
                  "entry": entry["principalArn"] if entry else None})
        if entry is None:
            return status(401, "Unauthorized", "Unauthorized")
        parsed = urllib.parse.urlparse(path)
        if parsed.path.startswith("/api/v1/namespaces/"):
            return self.pods_request(method, region, cluster, parsed, entry, principal, body)
        m = re.fullmatch(r"/api/v1/nodes(?:/([^/]+))?", parsed.path)
        if not m:
            return status(404, "NotFound", "the server could not find the requested resource")
        if method != "GET":
            return status(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")
        name = urllib.parse.unquote(m.group(1)) if m.group(1) else None
        if not self.may_read_nodes(region, cluster, entry):
            user = entry.get("username") or principal
            verb = "get" if name else "list"
            message = 'User "%s" cannot %s resource "nodes" in API group "" at the cluster scope' % (user, verb)
            if name:
                return status(403, "Forbidden", 'nodes "%s" is forbidden: %s' % (name, message), {"name": name, "kind": "nodes"})
            return status(403, "Forbidden", "nodes is forbidden: " + message, {"kind": "nodes"})
        nodes = self.current_nodes(region, cluster)
        if name is None:
            return 200, {"kind": "NodeList", "apiVersion": "v1", "metadata": {"resourceVersion": "1"},
                         "items": list(nodes.values())}
        if name not in nodes:
            return status(404, "NotFound", 'nodes "%s" not found' % name, {"name": name, "kind": "nodes"})
        return 200, nodes[name]

    # --- pods ------------------------------------------------------------------------------
    def pods_request(self, method, region, cluster, parsed, entry, principal, body):
        """Pods in a namespace: create, get, its log, delete (the parts bake uses)."""
        m = re.fullmatch(r"/api/v1/namespaces/([^/]+)/pods(?:/([^/]+)(/log)?)?", parsed.path)
        if not m:
            return status(404, "NotFound", "the server could not find the requested resource")
        ns, name, log = urllib.parse.unquote(m.group(1)), m.group(2) and urllib.parse.unquote(m.group(2)), m.group(3)
        verb = {"POST": "create", "DELETE": "delete", "GET": "get" if name else "list"}.get(method)
        if verb is None or (method == "POST" and name) or (method == "DELETE" and (not name or log)):
            return status(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")
        resource = "pods/log" if log else "pods"
        if not self.may(region, cluster, entry, verb, ns):
            user = entry.get("username") or principal
            message = 'User "%s" cannot %s resource "%s" in API group "" in the namespace "%s"' % (
                user, verb, resource, ns)
            details = {"kind": "pods"}
            if name:
                details["name"] = name
            return status(403, "Forbidden", '%s is forbidden: %s' % (('pods "%s"' % name) if name else "pods", message), details)
        if ns not in NAMESPACES:
            return status(404, "NotFound", 'namespaces "%s" not found' % ns, {"name": ns, "kind": "namespaces"})
        key = (region, cluster)
        if method == "POST":
            return self.create_pod(key, ns, body)
        with self.lock:
            pod = self.pods.get(key, {}).get((ns, name)) if name else None
            listed = [p for (n, _), p in self.pods.get(key, {}).items() if n == ns]
        if name is None:
            return 200, {"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": "1"},
                         "items": [self.pod_now(p) for p in listed]}
        if pod is None:
            return status(404, "NotFound", 'pods "%s" not found' % name, {"name": name, "kind": "pods"})
        if method == "DELETE":
            with self.lock:
                self.pods[key].pop((ns, name), None)
            self.kubelet.delete(pod["metadata"]["uid"])
            return 200, self.pod_now(pod)
        if log:
            text = self.kubelet.log(pod["metadata"]["uid"])
            if text is None:
                # The kubelet's answer for a container not started (kubelet_pods.go
                # validateContainerLogStatus), passed on by the API server as a BadRequest.
                waiting = self.pod_now(pod)["status"]["containerStatuses"][0]["state"].get("waiting", {})
                cname = pod["spec"]["containers"][0]["name"]
                return status(400, "BadRequest", 'container "%s" in pod "%s" is waiting to start: %s' % (
                    cname, name, waiting.get("reason", "ContainerCreating")))
            return 200, text
        now = self.pod_now(pod)
        # What the kubelet reported, for the test's reading of the log.
        self.log({"cluster": cluster, "pod": name, "phase": now["status"]["phase"],
                  "state": now["status"]["containerStatuses"][0]["state"]})
        return 200, now

    def create_pod(self, key, ns, body):
        """A pod as the API server validates and stores it (apis/core/validation ValidatePod for
        the fields checked here); bound to spec.nodeName at once, as a pod that names its node is
        (the scheduler skips it, taints with NoSchedule included)."""
        try:
            pod = json.loads(body or b"{}")
        except ValueError:
            return status(400, "BadRequest", "the body of the request was in an unknown format")
        meta = pod.setdefault("metadata", {})
        name = meta.get("name") or ""
        spec = pod.get("spec") or {}
        containers = spec.get("containers") or []
        causes = []
        if not re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*", name) or len(name) > 253:
            causes.append("metadata.name: Invalid value: %r: a lowercase RFC 1123 subdomain" % name)
        if meta.get("namespace", ns) != ns:
            return status(400, "BadRequest", "the namespace of the provided object does not match the namespace sent on the request")
        if not containers:
            causes.append("spec.containers: Required value")
        for i, c in enumerate(containers):
            if not c.get("name"):
                causes.append("spec.containers[%d].name: Required value" % i)
            if not c.get("image"):
                causes.append("spec.containers[%d].image: Required value" % i)
        if spec.get("restartPolicy", "Always") not in ("Always", "OnFailure", "Never"):
            causes.append("spec.restartPolicy: Unsupported value")
        if causes:
            return status(422, "Invalid", 'Pod "%s" is invalid: %s' % (name, "; ".join(causes)),
                          {"name": name, "kind": "Pod"})
        with self.lock:
            pods = self.pods.setdefault(key, {})
            if (ns, name) in pods:
                return status(409, "AlreadyExists", 'pods "%s" already exists' % name, {"name": name, "kind": "pods"})
            self.pod_seq += 1
            meta.update(namespace=ns, uid=str(uuid.uuid4()), resourceVersion=str(self.pod_seq),
                        creationTimestamp=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
            pods[(ns, name)] = pod
            seq = self.pod_seq
        node = spec.get("nodeName")
        nodes = self.current_nodes(*key)
        if node in nodes:
            instance = nodes[node]["spec"]["providerID"].rsplit("/", 1)[-1]
            # A secondary IP of the node's subnet, as ipamd hands them out (the stand-in's VPC
            # is the VM: nothing else holds these addresses).
            self.kubelet.run_pod(pod, instance, "10.0.%d.%d" % (128 + seq // 250 % 100, 2 + seq % 250))
        return 201, self.pod_now(pod)

    def pod_now(self, pod):
        """The pod with the status its kubelet reports now."""
        out = json.loads(json.dumps(pod))
        phase, state = self.kubelet.state(pod["metadata"]["uid"])
        c = pod["spec"]["containers"][0]
        out["status"] = {"phase": phase, "containerStatuses": [{
            "name": c["name"], "image": c["image"], "ready": phase == "Running", "restartCount": 0,
            "state": state}]}
        return out

    def may(self, region, cluster, entry, verb, ns):
        """The EKS access policies' pod permissions (access policy reference): edit/admin in
        their scope, cluster admin everywhere, the view policies read only."""
        if entry.get("type", "STANDARD") != "STANDARD":
            return False
        allowed = POD_WRITERS if verb in ("create", "delete") else POD_WRITERS + POD_READERS
        for p in self.eks.policies_of(region, cluster, entry["principalArn"]):
            name = p["policyArn"].rsplit("/", 1)[-1]
            scope = p["accessScope"]
            if name in allowed and (scope["type"] == "cluster" or ns in scope.get("namespaces", [])):
                return True
        return False

    def may_read_nodes(self, region, cluster, entry):
        if entry.get("type", "STANDARD") != "STANDARD":
            return False
        policies = self.eks.policies_of(region, cluster, entry["principalArn"])
        return any(p["policyArn"].rsplit("/", 1)[-1] in NODE_READERS and p["accessScope"]["type"] == "cluster"
                   for p in policies)

    def log(self, record):
        record["t"] = round(time.time(), 3)
        with self.lock:
            with open(self.log_path, "a") as f:
                f.write(json.dumps(record) + "\n")

    # --- the emulated kubelet ---------------------------------------------------------------
    def run_instances(self, region, form, data, cfg, launched_at, vm=False):
        """Registers, later, the node of each instance whose user data joins a cluster: once
        the emulated boot is over, or for a VM (`vm`) once its kubelet is up (kubelet.py)."""
        user_data = (form.get("UserData") or [""])[0]
        try:
            text = base64.b64decode(user_data).decode(errors="replace")
        except ValueError:
            return
        join = parse_join(text)
        if join is None:
            return
        cluster, taints, labels = join
        profile = (form.get("IamInstanceProfile.Name") or [""])[0] or \
            (form.get("IamInstanceProfile.Arn") or [""])[0].rsplit("/", 1)[-1]
        roles = []
        if profile:
            st, xml = self.moto_iam([("Action", "GetInstanceProfile"), ("InstanceProfileName", profile)])
            if st == 200:
                roles = re.findall(r"<Arn>(arn:aws:iam::\d+:role/[^<]+)</Arn>", xml.decode())
        entries = [self.entry_of(region, cluster, r) for r in roles]
        if not any(e is not None and e.get("type") == "EC2_LINUX" for e in entries):
            return   # the kubelet is refused: the node never registers
        boot = float(cfg.get("agent_online_after_s", 0))
        ready_after = float(cfg.get("node_ready_after_s", 0))
        # Each instance's part of the answer starts at its <instanceId>; its own private DNS
        # name and zone come before its network interfaces'.
        for part in data.split(b"<instanceId>")[1:]:
            iid = part.split(b"</instanceId>", 1)[0].decode()
            dns = re.search(rb"<privateDnsName>([^<]+)</privateDnsName>", part)
            zone = re.search(rb"<availabilityZone>([^<]+)</availabilityZone>", part)
            if not dns:
                continue
            with self.lock:
                self.nodes.setdefault((region, cluster), {})[dns.group(1).decode()] = {
                    "instance": iid, "zone": zone.group(1).decode() if zone else region + "a",
                    "registers_at": None if vm else launched_at + boot,
                    "ready_at": None if ready_after < 0 or vm else launched_at + boot + ready_after,
                    "vm": vm, "ready_after": ready_after,
                    "taints": taints, "labels": labels}

    def terminate_instances(self, form):
        gone = {v[0] for k, v in form.items() if k.startswith("InstanceId.")}
        with self.lock:
            for nodes in self.nodes.values():
                for name in [n for n, r in nodes.items() if r["instance"] in gone]:
                    del nodes[name]

    def current_nodes(self, region, cluster):
        now = time.time()
        with self.lock:
            records = dict(self.nodes.get((region, cluster), {}))
        out = {}
        for name, r in records.items():
            if r["vm"] and r["registers_at"] is None:
                if not self.kubelet.node_up(r["instance"]):
                    continue
                with self.lock:
                    r["registers_at"] = now
                    r["ready_at"] = None if r["ready_after"] < 0 else now + r["ready_after"]
            if now < r["registers_at"]:
                continue
            ready = r["ready_at"] is not None and now >= r["ready_at"]
            stamp = datetime.datetime.fromtimestamp(r["registers_at"], datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
            taints = [dict(t) for t in r["taints"]]
            if not ready:
                # The node lifecycle controller's taint while Ready is not True (Kubernetes docs,
                # "Taints and Tolerations": node.kubernetes.io/not-ready).
                taints.append({"key": "node.kubernetes.io/not-ready", "effect": "NoSchedule"})
            labels = dict(r["labels"])
            labels.update({"kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                           "topology.kubernetes.io/zone": r["zone"]})
            out[name] = {
                "kind": "Node", "apiVersion": "v1",
                "metadata": {"name": name, "uid": hashlib.md5(name.encode()).hexdigest(),
                             "creationTimestamp": stamp, "labels": labels},
                "spec": {"providerID": "aws:///%s/%s" % (r["zone"], r["instance"]), "taints": taints},
                "status": {"conditions": [{
                    "type": "Ready", "status": "True" if ready else "False",
                    "reason": "KubeletReady" if ready else "KubeletNotReady",
                    # The kubelet's Ready condition (kubernetes pkg/kubelet/nodestatus/setters.go,
                    # ReadyCondition); NotReady carries the runtime's network status as
                    # containerd reports it before the CNI has written its config.
                    "message": "kubelet is posting ready status" if ready else
                    "container runtime network not ready: NetworkReady=false reason:NetworkPluginNotReady message:Network plugin returns error: cni plugin not initialized",
                    "lastHeartbeatTime": stamp, "lastTransitionTime": stamp}]},
            }
        return out


def fix_moto_identity(arn):
    """moto answers GetCallerIdentity for a key it does not know with
    `arn:aws:sts::<account>:user/moto`; STS writes an IAM user's ARN as `arn:aws:iam::...`. The
    emulator's account treats every such key as its IAM user `moto`."""
    return re.sub(r"^arn:aws:sts::(\d{12}):user/", r"arn:aws:iam::\1:user/", arn)


def parse_join(text):
    """(cluster, taints, labels) from a node's user data, as nodeadm (NodeConfig
    spec.cluster.name, spec.kubelet.flags) or /etc/eks/bootstrap.sh (first argument,
    --kubelet-extra-args) read it, or None when it joins no cluster."""
    cluster = None
    m = re.search(r"kind:\s*NodeConfig.*?cluster:\s*\n\s+name:\s*(\S+)", text, re.S)
    if m:
        cluster = m.group(1).strip("'\"")
    else:
        m = re.search(r"/etc/eks/bootstrap\.sh\s+'?([A-Za-z0-9][A-Za-z0-9_-]*)'?", text)
        if m:
            cluster = m.group(1)
    if cluster is None:
        return None
    taints, labels = [], {}
    for spec in re.findall(r"--register-with-taints=([^\s'\"]+)", text):
        for t in spec.split(","):
            kv, _, effect = t.partition(":")
            key, _, value = kv.partition("=")
            taint = {"key": key, "effect": effect}
            if value:
                taint["value"] = value
            taints.append(taint)
    for spec in re.findall(r"--node-labels=([^\s'\"]+)", text):
        for kv in spec.split(","):
            key, _, value = kv.partition("=")
            labels[key] = value
    return cluster, taints, labels
