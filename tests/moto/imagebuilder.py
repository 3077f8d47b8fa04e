"""EC2 Image Builder, for exactly the calls bake makes (moto 5.2.5 has no Image Builder).

Resources are held here; a build is run for real: its instances are the emulator's EC2 instances
(VMs when their image is a machine, machines.py), its AMI is EC2's CreateImage of the stopped
build instance, and the components' documents are run on the instances as AWSTOE runs them.
The stand-in never reads what bake meant: it runs the documents it was given.

What each trait comes from (the Image Builder API Reference and User Guide; the service model,
botocore `data/imagebuilder/2019-12-02/service-2.json`; the Service Authorization Reference):
- restJson1, each operation at its own URI: `PUT /Create*` and `PUT /CancelImageCreation` with a
  JSON body, `GET /GetImage` and `DELETE /DeleteImage` with `imageBuildVersionArn` in the query,
  `POST /List*` with a JSON body, `maxResults` 1-25 and a `nextToken`.
- clientToken 1-36 characters (API Reference, CreateComponent: "Maximum length of 36"); a token
  reused with other parameters is an IdempotentParameterMismatchException, with the same ones it
  answers as the first time.
- ResourceName `^[-_A-Za-z-0-9][-_A-Za-z0-9 ]{1,126}[-_A-Za-z-0-9]$`; semanticVersion
  `^[0-9]+\.[0-9]+\.[0-9]+$`; component data 1-16,000 characters; descriptions 1-1,024; at most
  50 tags, keys 1-128 characters and never `aws:`, values at most 256; List filters: at most 10,
  of at most 10 values each.
- Errors and their HTTP status (service model): 400 for InvalidParameterValueException,
  InvalidRequestException, InvalidVersionNumberException, ResourceAlreadyExistsException,
  ResourceDependencyException, ResourceInUseException, IdempotentParameterMismatchException;
  404 ResourceNotFoundException. A component version that exists: components are immutable
  and CreateComponent lists ResourceInUseException (not ResourceAlreadyExistsException);
  recipes and configurations that exist: ResourceAlreadyExistsException. CancelImageCreation
  works "only on images in a non-terminal state" (InvalidRequestException otherwise);
  DeleteImage of a build in progress: ResourceDependencyException. An unknown build ARN is not
  documented: ResourceNotFoundException here.
- ARNs (Service Authorization Reference): `component/<name>/<version>/<build>`,
  `image-recipe/<name>/<version>`, `infrastructure-configuration/<name>`,
  `distribution-configuration/<name>`, `image/<recipe name>/<version>/<build>`; names lowercased
  (the ARN's name segment is `[a-z0-9-_]+`); build numbers count from 1; workflow executions
  `wf-<uuid>`, step executions `step-<uuid>`.
- A build's states (ImageStatus): PENDING, CREATING, BUILDING, TESTING, DISTRIBUTING, then
  AVAILABLE, or FAILED with a reason of at most 1,024 characters in the documented form
  "Workflow Execution ID: 'wf-...' failed with reason: Document arn:...component/.../1 failed!",
  or CANCELLED; DeleteImage leaves DELETED and does not delete the AMI.
- Workflows (the AWS-managed `build-image` and `test-image`): BUILD (LaunchBuildInstance,
  waiting for the SSM agent; ApplyBuildComponents; InventoryCollection; RunSanitizeScript;
  CreateOutputAMI; TerminateBuildInstance), TEST (LaunchTestInstance, ApplyTestComponents,
  TerminateTestInstance), then DISTRIBUTION; statuses RUNNING, COMPLETED, FAILED, SKIPPED,
  CANCELLED, as ListWorkflowExecutions / ListWorkflowStepExecutions answer them.
- The build instance is launched from the recipe's parent image with the infrastructure
  configuration's instance type, instance profile, subnet, security groups, metadata options
  and resource tags, and tagged `CreatedBy: EC2 Image Builder` and `Ec2ImageBuilderArn`; the
  test instance likewise from the output AMI. Components run as root through the SSM agent
  (workflow step actions use Systems Manager SendCommand), so the agent leaves what it leaves
  (machines.AgentTraces). With terminateInstanceOnFailure, a failed build leaves no instance.
- AWSTOE (User Guide, "Use the AWSTOE component document framework", "Action modules"): phases
  build and validate on the build instance, test on the test instance, in document order;
  steps in order; ExecuteBash writes its commands to a file under the working directory
  (`TOE_<time>_<id>/`), runs it with bash and takes its exit code; onFailure Abort (default:
  the document fails), Continue (the document fails after the rest), Ignore; timeoutSeconds
  default 7,200, -1 none; maxAttempts default 1. Exit 194 asks for a reboot, which this
  stand-in does not do: the step fails, saying so.
- The Linux clean-up script Image Builder runs before the AMI (User Guide, "Security best
  practices"): SANITIZE below, what it removes of what these instances have. It leaves
  /var/lib/amazon/ssm alone.
- What becomes of the output AMI when the test phase fails or a build is cancelled is not
  documented: the stand-in leaves it registered (tagged Ec2ImageBuilderArn), the worst case for
  the caller, who must clean it up.

Not modelled: distribution to other regions or accounts (bake distributes to its own region),
enhanced image metadata (InventoryCollection is SKIPPED), container recipes, lifecycle policies,
image pipelines, and AWSTOE's one SendCommand per component run (here: one per step).
"""
import base64
import datetime
import json
import re
import threading
import time
import urllib.parse
import uuid

import yaml

ACCOUNT = "123456789012"
NAME = re.compile(r"^[-_A-Za-z-0-9][-_A-Za-z0-9 ]{1,126}[-_A-Za-z-0-9]$")
VERSION = re.compile(r"^[0-9]+\.[0-9]+\.[0-9]+$")
TERMINAL = ("AVAILABLE", "FAILED", "CANCELLED", "DELETED")
# The steps of the AWS-managed build and test workflows, as ListWorkflowStepExecutions names them.
BUILD_STEPS = ("LaunchBuildInstance", "ApplyBuildComponents", "InventoryCollection", "RunSanitizeScript",
               "CreateOutputAMI", "TerminateBuildInstance")
TEST_STEPS = ("LaunchTestInstance", "ApplyTestComponents", "TerminateTestInstance")
# Image Builder's Linux clean-up script (User Guide, "Security best practices"): what it shreds
# of what these instances have. It runs when {{workingDirectory}}/perform_cleanup exists, which
# Image Builder's own user data creates (bake never overrides it).
WORKDIR = "/tmp"
SANITIZE = """#!/bin/bash
rm -rf /var/lib/cloud/* /etc/hostname
rm -f /etc/ssh/ssh_host_rsa_key /etc/ssh/ssh_host_rsa_key.pub /etc/ssh/ssh_host_ecdsa_key \\
  /etc/ssh/ssh_host_ecdsa_key.pub /etc/ssh/ssh_host_ed25519_key /etc/ssh/ssh_host_ed25519_key.pub \\
  /root/.ssh/authorized_keys /home/*/.ssh/authorized_keys
rm -f /var/log/audit/audit.log /var/log/boot.log /var/log/dmesg /var/log/cron
rm -rf /tmp/TOE_* /var/log/amazon/ssm /var/tmp/*
rm -f /var/log/sa/sa* /var/lib/dhclient/* /var/lib/dhcp/dhclient.* /var/lib/rsyslog/imjournal.state
rm -rf /var/log/journal/*
touch /etc/machine-id
exit 0
"""
REASON = 1024           # characters of a state's reason


class Refused(Exception):
    def __init__(self, code, message, status=400):
        super().__init__(message)
        self.code, self.message, self.status = code, message, status


def now_iso():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def arn(region, kind, *parts):
    return "arn:aws:imagebuilder:%s:%s:%s/%s" % (region, ACCOUNT, kind, "/".join(p.lower() for p in parts))


def check_name(value, field="name"):
    if not isinstance(value, str) or not NAME.match(value):
        raise Refused("InvalidParameterValueException", "The value supplied for parameter '%s' is not valid. %r must match %s" % (field, value, NAME.pattern))


def check_common(body, needs_version=False):
    token = body.get("clientToken")
    if not isinstance(token, str) or not 1 <= len(token) <= 36:
        raise Refused("ValidationException", "1 validation error detected: Value '%s' at 'clientToken' failed to satisfy constraint: Member must have length less than or equal to 36" % token)
    check_name(body.get("name"))
    if needs_version and not VERSION.match(str(body.get("semanticVersion", ""))):
        raise Refused("InvalidVersionNumberException", "The semantic version %r is not valid: use <major>.<minor>.<patch>" % body.get("semanticVersion"))
    desc = body.get("description")
    if desc is not None and not 1 <= len(desc) <= 1024:
        raise Refused("ValidationException", "description must be 1 to 1024 characters")
    check_tags(body.get("tags"))
    check_tags(body.get("resourceTags"))


def check_tags(tags):
    if tags is None:
        return
    if len(tags) > 50:
        raise Refused("ValidationException", "1 validation error detected: Value at 'tags' failed to satisfy constraint: Member must have length less than or equal to 50")
    for k, v in tags.items():
        if not 1 <= len(k) <= 128 or len(v) > 256 or k.lower().startswith("aws:"):
            raise Refused("ValidationException", "tag %r=%r: keys are 1-128 characters and not aws:, values at most 256" % (k, v))


class ImageBuilder:
    """The service's state in each region, and its builds."""

    def __init__(self, moto_ec2, moto_iam, machines, config):
        self.moto_ec2 = moto_ec2        # (region, [(k, v)]) -> XML bytes, straight to moto
        self.moto_iam = moto_iam        # ([(k, v)]) -> (status, XML), straight to moto
        self.machines = machines        # the VMs behind instances (machines.Machines)
        self.config = config            # () -> the proxy's config
        self.lock = threading.Lock()
        self.components = {}            # version ARN -> component
        self.recipes = {}               # ARN -> image recipe
        self.infrastructure = {}        # ARN -> infrastructure configuration
        self.distribution = {}          # ARN -> distribution configuration
        self.images = {}                # build version ARN -> build
        self.executions = {}            # workflow execution ID -> execution
        self.tokens = {}                # (operation, clientToken) -> (request, answer)

    # -- HTTP -------------------------------------------------------------------------------
    def handle(self, method, path, body, region):
        """(status, JSON answer) of one request."""
        url = urllib.parse.urlparse(path)
        op = url.path.strip("/")
        query = {k: v[0] for k, v in urllib.parse.parse_qs(url.query).items()}
        req = json.loads(body or b"{}") if method in ("PUT", "POST") else query
        handler = getattr(self, "op_" + op, None)
        expected = {"Create": "PUT", "Cancel": "PUT", "Get": "GET", "Delete": "DELETE", "List": "POST"}
        if handler is None or expected.get(re.match(r"[A-Z][a-z]+", op).group(0)) != method:
            return 404, {"message": "no operation %s %s in this stand-in" % (method, op)}
        try:
            token = req.get("clientToken") if op.startswith(("Create", "Cancel")) else None
            if token is not None:
                with self.lock:
                    seen = self.tokens.get((op, token))
                if seen is not None:
                    if seen[0] != req:
                        raise Refused("IdempotentParameterMismatchException",
                                      "The client token %s was used with different parameters" % token)
                    return 200, seen[1]
            answer = handler(req, region)
            if token is not None:
                with self.lock:
                    self.tokens[(op, token)] = (req, answer)
            return 200, answer
        except Refused as e:
            return e.status, {"__type": e.code, "message": e.message}

    @staticmethod
    def error_headers(code):
        return [("x-amzn-ErrorType", code)]

    # -- components and configurations ------------------------------------------------------
    def op_CreateComponent(self, req, region):
        check_common(req, needs_version=True)
        data = req.get("data")
        if req.get("uri"):
            raise Refused("InvalidParameterCombinationException", "this stand-in takes components as data, not uri")
        if not isinstance(data, str) or not 1 <= len(data) <= 16000:
            raise Refused("ValidationException", "1 validation error detected: Value at 'data' failed to satisfy constraint: Member must have length between 1 and 16000")
        if req.get("platform") not in ("Windows", "Linux", "macOS"):
            raise Refused("ValidationException", "platform must be Windows, Linux or macOS")
        try:
            doc = yaml.safe_load(data)
        except yaml.YAMLError as e:
            raise Refused("InvalidRequestException", "The component document is not valid YAML: %s" % e)
        problem = document_problem(doc)
        if problem:
            raise Refused("InvalidRequestException", "The component document is not valid: %s" % problem)
        version_arn = arn(region, "component", req["name"], req["semanticVersion"])
        with self.lock:
            if version_arn in self.components:
                raise Refused("ResourceInUseException",
                              "The component %s already exists: components are immutable, create a new version" % version_arn)
            self.components[version_arn] = {"name": req["name"], "version": req["semanticVersion"], "document": doc,
                                            "platform": req["platform"], "tags": req.get("tags") or {},
                                            "description": req.get("description"), "region": region,
                                            "dateCreated": now_iso()}
        return {"requestId": str(uuid.uuid4()), "clientToken": req["clientToken"],
                "componentBuildVersionArn": version_arn + "/1"}

    def op_ListComponents(self, req, region):
        owner = req.get("owner", "Self")
        if owner not in ("Self", "Shared", "Amazon", "ThirdParty", "AWSMarketplace"):
            raise Refused("ValidationException", "owner %r is not valid" % owner)
        names = self.name_filter(req)
        with self.lock:
            found = [(a, c) for a, c in self.components.items() if c["region"] == region and owner == "Self"
                     and (names is None or c["name"] in names)]
        return self.paged(req, "componentVersionList", [
            {"arn": a, "name": c["name"], "version": c["version"], "platform": c["platform"],
             "owner": ACCOUNT, "type": "BUILD", "dateCreated": c["dateCreated"]} for a, c in found])

    def op_CreateImageRecipe(self, req, region):
        check_common(req, needs_version=True)
        parent = req.get("parentImage") or ""
        if not re.fullmatch(r"ami-[0-9a-f]+", parent) and not parent.startswith("arn:aws:imagebuilder:"):
            raise Refused("InvalidParameterValueException", "parentImage %r is neither an AMI ID nor an image ARN" % parent)
        if re.fullmatch(r"ami-[0-9a-f]+", parent) and "<imageId>%s</imageId>" % parent not in \
                self.moto_ec2(region, [("Action", "DescribeImages"), ("ImageId.1", parent)]).decode():
            raise Refused("InvalidParameterValueException", "The parent image %s does not exist in %s" % (parent, region))
        components = req.get("components") or []
        if not components:
            raise Refused("ValidationException", "components must list at least one component")
        resolved = []
        for c in components:
            a = c.get("componentArn", "")
            version = re.sub(r"/\d+$", "", a) if a.count("/") == 3 else a
            with self.lock:
                if version not in self.components:
                    raise Refused("ResourceNotFoundException", "The component %s does not exist" % a)
            resolved.append(version)
        recipe_arn = arn(region, "image-recipe", req["name"], req["semanticVersion"])
        with self.lock:
            if recipe_arn in self.recipes:
                raise Refused("ResourceAlreadyExistsException",
                              "The image recipe %s already exists: image recipes are immutable" % recipe_arn)
            self.recipes[recipe_arn] = {"name": req["name"], "version": req["semanticVersion"], "parent": parent,
                                        "components": resolved, "blockDeviceMappings": req.get("blockDeviceMappings") or [],
                                        "tags": req.get("tags") or {}, "region": region, "builds": 0,
                                        "dateCreated": now_iso()}
        return {"requestId": str(uuid.uuid4()), "clientToken": req["clientToken"], "imageRecipeArn": recipe_arn}

    def op_ListImageRecipes(self, req, region):
        names = self.name_filter(req)
        with self.lock:
            found = [(a, r) for a, r in self.recipes.items() if r["region"] == region
                     and req.get("owner", "Self") == "Self" and (names is None or r["name"] in names)]
        return self.paged(req, "imageRecipeSummaryList", [
            {"arn": a, "name": r["name"], "platform": "Linux", "owner": ACCOUNT, "parentImage": r["parent"],
             "dateCreated": r["dateCreated"], "tags": r["tags"]} for a, r in found])

    def op_CreateInfrastructureConfiguration(self, req, region):
        check_common(req)
        profile = req.get("instanceProfileName") or ""
        status, xml = self.moto_iam([("Action", "GetInstanceProfile"), ("InstanceProfileName", profile)])
        if status != 200:
            raise Refused("InvalidParameterValueException", "The instance profile %r does not exist" % profile)
        for field, action, key, present in (("subnetId", "DescribeSubnets", "SubnetId.1", "<subnetId>%s</subnetId>"),):
            value = req.get(field)
            if value and (present % value) not in self.moto_ec2(region, [("Action", action), (key, value)]).decode():
                raise Refused("InvalidParameterValueException", "The %s %s does not exist" % (field, value))
        for sg in req.get("securityGroupIds") or []:
            if ("<groupId>%s</groupId>" % sg) not in self.moto_ec2(region, [("Action", "DescribeSecurityGroups"), ("GroupId.1", sg)]).decode():
                raise Refused("InvalidParameterValueException", "The security group %s does not exist" % sg)
        if req.get("securityGroupIds") and not req.get("subnetId"):
            raise Refused("InvalidParameterCombinationException", "securityGroupIds needs a subnetId")
        a = arn(region, "infrastructure-configuration", req["name"])
        with self.lock:
            if a in self.infrastructure:
                raise Refused("ResourceAlreadyExistsException", "The infrastructure configuration %s already exists" % a)
            self.infrastructure[a] = dict(req, region=region, dateCreated=now_iso())
        return {"requestId": str(uuid.uuid4()), "clientToken": req["clientToken"], "infrastructureConfigurationArn": a}

    def op_ListInfrastructureConfigurations(self, req, region):
        names = self.name_filter(req)
        with self.lock:
            found = [(a, c) for a, c in self.infrastructure.items() if c["region"] == region and (names is None or c["name"] in names)]
        return self.paged(req, "infrastructureConfigurationSummaryList", [
            {"arn": a, "name": c["name"], "instanceTypes": c.get("instanceTypes") or [],
             "instanceProfileName": c.get("instanceProfileName"), "tags": c.get("tags") or {},
             "resourceTags": c.get("resourceTags") or {}, "dateCreated": c["dateCreated"]} for a, c in found])

    def op_CreateDistributionConfiguration(self, req, region):
        check_common(req)
        dists = req.get("distributions") or []
        if not dists:
            raise Refused("ValidationException", "distributions must list at least one region")
        for d in dists:
            ami = d.get("amiDistributionConfiguration") or {}
            name = ami.get("name")
            if name is not None:
                # An AMI name is 3-128 characters of letters, digits and ( ) [ ] . / - ' @ _,
                # once its {{imagebuilder:...}} variables are expanded.
                expanded = name.replace("{{imagebuilder:buildDate}}", "2026-01-01T00-00-00.000Z")
                if not re.fullmatch(r"[A-Za-z0-9()\[\]./\-'@_ ]{3,128}", expanded):
                    raise Refused("InvalidParameterValueException", "The AMI name %r is not valid" % name)
            check_tags(ami.get("amiTags"))
        a = arn(region, "distribution-configuration", req["name"])
        with self.lock:
            if a in self.distribution:
                raise Refused("ResourceAlreadyExistsException", "The distribution configuration %s already exists" % a)
            self.distribution[a] = dict(req, region=region, dateCreated=now_iso())
        return {"requestId": str(uuid.uuid4()), "clientToken": req["clientToken"], "distributionConfigurationArn": a}

    def op_ListDistributionConfigurations(self, req, region):
        names = self.name_filter(req)
        with self.lock:
            found = [(a, c) for a, c in self.distribution.items() if c["region"] == region and (names is None or c["name"] in names)]
        return self.paged(req, "distributionConfigurationSummaryList", [
            {"arn": a, "name": c["name"], "regions": [d.get("region") for d in c["distributions"]],
             "tags": c.get("tags") or {}, "dateCreated": c["dateCreated"]} for a, c in found])

    @staticmethod
    def name_filter(req):
        """The names a List call's `name` filter asks for (None: no filter). At most 10 filters
        of at most 10 values each."""
        filters = req.get("filters") or []
        if len(filters) > 10 or any(len(f.get("values") or []) > 10 for f in filters):
            raise Refused("ValidationException", "at most 10 filters of at most 10 values each")
        names = None
        for f in filters:
            if f.get("name") != "name":
                raise Refused("InvalidParameterValueException", "this stand-in filters by name only, not %r" % f.get("name"))
            names = set(f.get("values") or [])
        return names

    @staticmethod
    def paged(req, member, items):
        size = int(req.get("maxResults") or 25)
        if not 1 <= size <= 25:
            raise Refused("ValidationException", "maxResults must be between 1 and 25")
        start = int(req.get("nextToken") or 0)
        out = {"requestId": str(uuid.uuid4()), member: items[start:start + size]}
        if start + size < len(items):
            out["nextToken"] = str(start + size)
        return out

    # -- builds -----------------------------------------------------------------------------
    def op_CreateImage(self, req, region):
        token = req.get("clientToken")
        if not isinstance(token, str) or not 1 <= len(token) <= 36:
            raise Refused("ValidationException", "1 validation error detected: Value '%s' at 'clientToken' failed to satisfy constraint: Member must have length less than or equal to 36" % token)
        check_tags(req.get("tags"))
        with self.lock:
            recipe = self.recipes.get(req.get("imageRecipeArn"))
            infra = self.infrastructure.get(req.get("infrastructureConfigurationArn"))
            dist = self.distribution.get(req.get("distributionConfigurationArn")) if req.get("distributionConfigurationArn") else None
        for what, found, key in (("image recipe", recipe, "imageRecipeArn"),
                                 ("infrastructure configuration", infra, "infrastructureConfigurationArn"),
                                 ("distribution configuration", dist if req.get("distributionConfigurationArn") else True,
                                  "distributionConfigurationArn")):
            if found is None:
                raise Refused("ResourceNotFoundException", "The %s %s does not exist" % (what, req.get(key)))
        with self.lock:
            recipe["builds"] += 1
            build = recipe["builds"]
        image_arn = arn(region, "image", recipe["name"], recipe["version"], str(build))
        tests = (req.get("imageTestsConfiguration") or {}).get("imageTestsEnabled", True)
        image = {"arn": image_arn, "name": recipe["name"], "version": recipe["version"], "region": region,
                 "recipe": recipe, "infra": infra, "dist": dist, "tests": tests, "tags": req.get("tags") or {},
                 "state": {"status": "PENDING"}, "dateCreated": now_iso(), "workflows": [], "instances": [],
                 "ami": None, "cancel": threading.Event(), "outputResources": None}
        with self.lock:
            self.images[image_arn] = image
        threading.Thread(target=self.run_build, args=(image,), daemon=True).start()
        return {"requestId": str(uuid.uuid4()), "clientToken": token, "imageBuildVersionArn": image_arn}

    def op_GetImage(self, req, region):
        with self.lock:
            image = self.images.get(req.get("imageBuildVersionArn"))
            if image is None or image["state"]["status"] == "DELETED":
                raise Refused("ResourceNotFoundException", "The image %s does not exist" % req.get("imageBuildVersionArn"), 404)
            out = {"arn": image["arn"], "name": image["name"], "version": image["version"], "platform": "Linux",
                   "state": dict(image["state"]), "dateCreated": image["dateCreated"], "tags": image["tags"],
                   "imageRecipe": {"arn": next(a for a, r in self.recipes.items() if r is image["recipe"])},
                   "imageTestsConfiguration": {"imageTestsEnabled": image["tests"]}}
            if image["outputResources"]:
                out["outputResources"] = image["outputResources"]
        return {"requestId": str(uuid.uuid4()), "image": out}

    def op_CancelImageCreation(self, req, region):
        with self.lock:
            image = self.images.get(req.get("imageBuildVersionArn"))
            if image is None:
                raise Refused("ResourceNotFoundException", "The image %s does not exist" % req.get("imageBuildVersionArn"), 404)
            if image["state"]["status"] in TERMINAL:
                raise Refused("InvalidRequestException",
                              "The image %s is %s: only a build in progress can be cancelled" % (image["arn"], image["state"]["status"]))
            image["cancel"].set()
        return {"requestId": str(uuid.uuid4()), "clientToken": req.get("clientToken"), "imageBuildVersionArn": image["arn"]}

    def op_DeleteImage(self, req, region):
        with self.lock:
            image = self.images.get(req.get("imageBuildVersionArn"))
            if image is None or image["state"]["status"] == "DELETED":
                raise Refused("ResourceNotFoundException", "The image %s does not exist" % req.get("imageBuildVersionArn"), 404)
            if image["state"]["status"] not in TERMINAL:
                raise Refused("ResourceDependencyException",
                              "The image %s is %s: cancel the build before deleting it" % (image["arn"], image["state"]["status"]))
            image["state"] = {"status": "DELETED"}
        return {"requestId": str(uuid.uuid4()), "imageBuildVersionArn": image["arn"]}

    def op_ListImageBuildVersions(self, req, region):
        version = req.get("imageVersionArn") or ""
        with self.lock:
            found = [i for a, i in self.images.items() if a.rsplit("/", 1)[0] == version and i["state"]["status"] != "DELETED"]
            items = [{"arn": i["arn"], "name": i["name"], "version": i["version"], "platform": "Linux",
                      "owner": ACCOUNT, "state": dict(i["state"]), "dateCreated": i["dateCreated"], "tags": i["tags"]}
                     for i in found]
        return self.paged(req, "imageSummaryList", items)

    def op_ListImages(self, req, region):
        names = self.name_filter(req)
        with self.lock:
            versions = {}
            for i in self.images.values():
                if i["region"] == region and i["state"]["status"] != "DELETED" and (names is None or i["name"] in names):
                    versions[i["arn"].rsplit("/", 1)[0]] = i
        return self.paged(req, "imageVersionList", [
            {"arn": a, "name": i["name"], "version": i["version"], "platform": "Linux", "owner": ACCOUNT,
             "type": "AMI", "dateCreated": i["dateCreated"]} for a, i in sorted(versions.items())])

    def op_ListWorkflowExecutions(self, req, region):
        with self.lock:
            image = self.images.get(req.get("imageBuildVersionArn"))
            if image is None:
                raise Refused("ResourceNotFoundException", "The image %s does not exist" % req.get("imageBuildVersionArn"), 404)
            runs = [{"workflowBuildVersionArn": w["arn"], "workflowExecutionId": w["id"], "type": w["type"], "status": w["status"],
                     "startTime": w["start"]} for w in image["workflows"]]
        return {"requestId": str(uuid.uuid4()), "imageBuildVersionArn": image["arn"], "workflowExecutions": runs}

    def op_ListWorkflowStepExecutions(self, req, region):
        with self.lock:
            w = self.executions.get(req.get("workflowExecutionId"))
            if w is None:
                raise Refused("ResourceNotFoundException", "The workflow execution %s does not exist" % req.get("workflowExecutionId"), 404)
            steps = [dict(s) for s in w["steps"]]
        return {"requestId": str(uuid.uuid4()), "workflowExecutionId": w["id"], "steps": steps,
                "workflowBuildVersionArn": w["arn"], "imageBuildVersionArn": w["image"]}

    # -- a build, as the service runs it ----------------------------------------------------
    def set_status(self, image, status, reason=None):
        with self.lock:
            if image["state"]["status"] in TERMINAL:
                return
            image["state"] = {"status": status}
            if reason:
                image["state"]["reason"] = reason

    def workflow(self, image, kind, steps):
        managed = {"BUILD": "build-image", "TEST": "test-image", "DISTRIBUTION": "distribute-image"}[kind]
        w = {"id": "wf-" + str(uuid.uuid4()), "type": kind, "status": "RUNNING", "start": now_iso(),
             "arn": "arn:aws:imagebuilder:%s:aws:workflow/%s/%s/1.0.0/1" % (image["region"], kind.lower(), managed),
             "image": image["arn"],
             "steps": [{"stepExecutionId": "step-" + str(uuid.uuid4()), "name": s, "action": s,
                        "status": "PENDING"} for s in steps]}
        with self.lock:
            image["workflows"].append(w)
            self.executions[w["id"]] = w
        return w

    def step(self, w, name, status):
        with self.lock:
            for s in w["steps"]:
                if s["name"] == name:
                    s["status"] = status

    def run_build(self, image):
        region = image["region"]
        try:
            self.set_status(image, "CREATING")
            time.sleep(0.5)
            self.set_status(image, "BUILDING")
            w = self.workflow(image, "BUILD", BUILD_STEPS)
            build = self.launch(image, image["recipe"]["parent"], w, "LaunchBuildInstance", "Build")
            self.apply(image, w, "ApplyBuildComponents", build, ("build", "validate"))
            self.step(w, "InventoryCollection", "SKIPPED")
            self.step(w, "RunSanitizeScript", "RUNNING")
            self.run_script(image, build, SANITIZE, 300)
            self.step(w, "RunSanitizeScript", "COMPLETED")
            self.step(w, "CreateOutputAMI", "RUNNING")
            image["ami"] = self.output_ami(image, build)
            self.step(w, "CreateOutputAMI", "COMPLETED")
            self.step(w, "TerminateBuildInstance", "RUNNING")
            self.terminate(image, build)
            self.step(w, "TerminateBuildInstance", "COMPLETED")
            self.done(w, "COMPLETED")
            if image["tests"]:
                self.set_status(image, "TESTING")
                w = self.workflow(image, "TEST", TEST_STEPS)
                tester = self.launch(image, image["ami"], w, "LaunchTestInstance", "Test")
                self.apply(image, w, "ApplyTestComponents", tester, ("test",))
                self.step(w, "TerminateTestInstance", "RUNNING")
                self.terminate(image, tester)
                self.step(w, "TerminateTestInstance", "COMPLETED")
                self.done(w, "COMPLETED")
            self.cancelled(image)
            self.set_status(image, "DISTRIBUTING")
            w = self.workflow(image, "DISTRIBUTION", ("DistributeImage",))
            self.step(w, "DistributeImage", "RUNNING")
            amis = self.distribute(image)
            self.step(w, "DistributeImage", "COMPLETED")
            self.done(w, "COMPLETED")
            with self.lock:
                if image["state"]["status"] not in TERMINAL:
                    image["outputResources"] = {"amis": amis}
                    image["state"] = {"status": "AVAILABLE"}
        except Cancelled:
            self.end_badly(image, "CANCELLED", None)
        except BuildFailed as e:
            self.end_badly(image, "FAILED", str(e))
        except Exception as e:  # the stand-in's own trouble is a failed build, said as such
            self.end_badly(image, "FAILED", "Image Builder stand-in error: %r" % e)

    def end_badly(self, image, status, reason):
        with self.lock:
            for w in image["workflows"]:
                if w["status"] == "RUNNING":
                    w["status"] = "CANCELLED" if status == "CANCELLED" else "FAILED"
                    for s in w["steps"]:
                        if s["status"] == "RUNNING":
                            s["status"] = w["status"]
        terminate = image["infra"].get("terminateInstanceOnFailure", True) or status == "CANCELLED"
        for instance in list(image["instances"]):
            if terminate:
                self.terminate(image, instance)
        with self.lock:
            image["state"] = {"status": status}
            if reason:
                image["state"]["reason"] = reason

    def done(self, w, status):
        with self.lock:
            w["status"] = status

    def cancelled(self, image):
        if image["cancel"].is_set():
            raise Cancelled()

    def launch(self, image, ami, w, step, what):
        """An instance of `ami` as the infrastructure configuration describes it, once its agent
        is online; None-free: a launch that fails fails the build."""
        self.cancelled(image)
        self.step(w, step, "RUNNING")
        region, infra = image["region"], image["infra"]
        tags = dict(infra.get("resourceTags") or {})
        tags.update({"Name": "%s instance for %s" % (what, image["name"]), "CreatedBy": "EC2 Image Builder",
                     "Ec2ImageBuilderArn": image["arn"]})
        form = [("Action", "RunInstances"), ("ImageId", ami), ("MinCount", "1"), ("MaxCount", "1"),
                ("InstanceType", (infra.get("instanceTypes") or ["m5.large"])[0]),
                ("IamInstanceProfile.Name", infra.get("instanceProfileName", "")),
                ("MetadataOptions.HttpTokens", (infra.get("instanceMetadataOptions") or {}).get("httpTokens", "optional")),
                ("TagSpecification.1.ResourceType", "instance")]
        if infra.get("subnetId"):
            form.append(("SubnetId", infra["subnetId"]))
        for i, sg in enumerate(infra.get("securityGroupIds") or []):
            form.append(("SecurityGroupId.%d" % (i + 1), sg))
        for i, (k, v) in enumerate(sorted(tags.items())):
            form += [("TagSpecification.1.Tag.%d.Key" % (i + 1), k), ("TagSpecification.1.Tag.%d.Value" % (i + 1), v)]
        mappings = image["recipe"]["blockDeviceMappings"] if what == "Build" else []
        for i, m in enumerate(mappings):
            form.append(("BlockDeviceMapping.%d.DeviceName" % (i + 1), m.get("deviceName", "")))
            for k, v in (m.get("ebs") or {}).items():
                key = {"volumeSize": "VolumeSize", "volumeType": "VolumeType", "encrypted": "Encrypted",
                       "deleteOnTermination": "DeleteOnTermination", "kmsKeyId": "KmsKeyId"}.get(k)
                if key:
                    form.append(("BlockDeviceMapping.%d.Ebs.%s" % (i + 1, key), str(v).lower() if isinstance(v, bool) else str(v)))
        answer = self.moto_ec2(region, form)
        instance = re.search(rb"<instanceId>([^<]+)</instanceId>", answer)
        if instance is None:
            raise BuildFailed("%s instance could not be launched: %s" % (what, answer[:300].decode(errors="replace")))
        instance = instance.group(1).decode()
        image["instances"].append(instance)
        machine = self.machines.configure(self.config())
        if machine is not None:
            parsed = {}
            for k, v in form:
                parsed.setdefault(k, []).append(v)
            self.machines.run_instances(region, parsed, answer, machine)
        if not self.machines.owns(instance):
            raise BuildFailed("%s instance %s of %s: this emulator runs components on machines only, and %s is not one"
                              % (what, instance, ami, ami))
        # Systems Manager must see the instance's agent before anything runs on it.
        deadline = time.time() + float(machine.get("agent_timeout_s", 900) if machine else 60)
        while not self.machines.online(instance):
            self.cancelled(image)
            if time.time() > deadline:
                raise BuildFailed("%s instance %s: the SSM agent did not come online (check the instance profile's "
                                  "SSM permissions and the subnet's route to Systems Manager)" % (what, instance))
            time.sleep(0.5)
        self.step(w, step, "COMPLETED")
        return instance

    def apply(self, image, w, step, instance, phases):
        """The components' `phases`, in the recipe's order, as AWSTOE runs them."""
        self.step(w, step, "RUNNING")
        toe = "%s/TOE_%s_%s" % (WORKDIR, time.strftime("%Y-%m-%d_%H-%M-%S"), uuid.uuid4())
        for version_arn in image["recipe"]["components"]:
            with self.lock:
                comp = self.components[version_arn]
            for phase in comp["document"].get("phases") or []:
                if phase.get("name") not in phases:
                    continue
                failed = None
                for s in phase.get("steps") or []:
                    self.cancelled(image)
                    why = self.run_step(image, instance, s, "%s/%s/%s" % (toe, comp["name"], phase["name"]))
                    if why is None:
                        continue
                    on_failure = s.get("onFailure", "Abort")
                    if on_failure == "Ignore":
                        continue
                    failed = failed or why
                    if on_failure == "Abort":
                        break
                if failed:
                    self.step(w, step, "FAILED")
                    reason = "Workflow Execution ID: '%s' failed with reason: Document %s/1 failed! Phase %s, %s" % (
                        w["id"], version_arn, phase["name"], failed)
                    raise BuildFailed(reason[:REASON])
        self.step(w, step, "COMPLETED")

    def run_step(self, image, instance, s, folder):
        """None if the step succeeded, else why it failed (with the end of its output)."""
        name = s.get("name")
        if s.get("action") != "ExecuteBash":
            return "step %s: action %s is not run by this stand-in" % (name, s.get("action"))
        # ExecuteBash writes its commands to a file and runs it with bash.
        path = "%s/%s.sh" % (folder, name)
        vm = self.machines.vm(instance)
        vm.agent.run(["/bin/mkdir", "-p", folder])
        vm.agent.write_file(path, ("\n".join((s.get("inputs") or {}).get("commands") or []) + "\n").encode())
        timeout = int(s.get("timeoutSeconds", 7200))
        why = None
        for _ in range(max(int(s.get("maxAttempts", 1)), 1)):
            status, code, out, err = self.run_script(image, instance, "/bin/bash %s" % path,
                                                     timeout if timeout > 0 else 86400)
            if status == "Success":
                return None
            if code == 194:
                return "step %s exited 194 (reboot), which this stand-in does not do" % name
            what = "timed out after %ds" % timeout if status == "TimedOut" else "exit status %s" % code
            # A workflow step's message holds at most 500 characters (service model): the end
            # of the step's output, where its error is.
            why = "step %s: %s: %s" % (name, what, (out + err).strip()[-500:])
        return why

    def run_script(self, image, instance, script, timeout):
        """(status, exit code, stdout, stderr) of `script` run through the instance's agent."""
        command_id = str(uuid.uuid4())
        self.machines.send_command({"InstanceIds": [instance],
                                    "Parameters": {"commands": [script], "executionTimeout": [str(timeout)]}},
                                   command_id)
        while True:
            inv = self.machines.invocation(command_id, instance)
            if inv is None:
                raise BuildFailed("instance %s is gone" % instance)
            if inv["Status"] != "InProgress":
                return inv["Status"], inv["ResponseCode"], inv["StandardOutputContent"], inv["StandardErrorContent"]
            if image["cancel"].is_set():
                raise Cancelled()
            time.sleep(0.1)

    def output_ami(self, image, instance):
        """The stopped build instance, imaged (in the build's region, under the distribution's name)."""
        region = image["region"]
        self.moto_ec2(region, [("Action", "StopInstances"), ("InstanceId.1", instance)])
        self.machines.stop_instances({"InstanceId.1": [instance]})
        name = image["name"]
        for d in (image["dist"] or {}).get("distributions") or []:
            if d.get("region") == region and (d.get("amiDistributionConfiguration") or {}).get("name"):
                name = d["amiDistributionConfiguration"]["name"]
        name = name.replace("{{imagebuilder:buildDate}}", datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H-%M-%S.%f")[:-3] + "Z")
        form = [("Action", "CreateImage"), ("InstanceId", instance), ("Name", name)]
        answer = self.moto_ec2(region, form)
        m = re.search(rb"<imageId>([^<]+)</imageId>", answer)
        if m is None:
            raise BuildFailed("CreateImage of %s failed: %s" % (instance, answer[:300].decode(errors="replace")))
        self.machines.create_image(region, {"InstanceId": [instance]}, answer)
        ami = m.group(1).decode()
        self.tag(region, [ami], {"CreatedBy": "EC2 Image Builder", "Ec2ImageBuilderArn": image["arn"]})
        return ami

    def distribute(self, image):
        """The output AMI in each region of the distribution configuration: tagged with its
        amiTags here (copies to other regions are not made by this stand-in: bake distributes to
        its own region only)."""
        region, out = image["region"], []
        for d in (image["dist"] or {"distributions": [{"region": region}]})["distributions"]:
            if d.get("region") != region:
                raise BuildFailed("distribution to %s: this stand-in distributes in the build's region only" % d.get("region"))
            tags = (d.get("amiDistributionConfiguration") or {}).get("amiTags") or {}
            if tags:
                self.tag(region, [image["ami"]], tags)
            out.append({"region": region, "image": image["ami"], "name": image["name"]})
        return out

    def tag(self, region, ids, tags):
        pairs = [("Action", "CreateTags")] + [("ResourceId.%d" % (i + 1), r) for i, r in enumerate(ids)]
        for i, (k, v) in enumerate(sorted(tags.items())):
            pairs += [("Tag.%d.Key" % (i + 1), k), ("Tag.%d.Value" % (i + 1), v)]
        self.moto_ec2(region, pairs)

    def terminate(self, image, instance):
        try:
            self.moto_ec2(image["region"], [("Action", "TerminateInstances"), ("InstanceId.1", instance)])
        finally:
            self.machines.terminate_instances({"InstanceId.1": [instance]})
            if instance in image["instances"]:
                image["instances"].remove(instance)

    def deregister(self, region, ami):
        xml = self.moto_ec2(region, [("Action", "DescribeImages"), ("ImageId.1", ami)]).decode()
        snaps = re.findall(r"<snapshotId>([^<]+)</snapshotId>", xml)
        self.moto_ec2(region, [("Action", "DeregisterImage"), ("ImageId", ami)])
        self.machines.deregister_image({"ImageId": [ami]})
        for s in snaps:
            self.moto_ec2(region, [("Action", "DeleteSnapshot"), ("SnapshotId", s)])


class Cancelled(Exception):
    pass


class BuildFailed(Exception):
    pass


def document_problem(doc):
    """Why an AWSTOE document is not valid (None if it is): schemaVersion 1.0, phases of known
    names, each step with a name, an action and the fields of its action."""
    if not isinstance(doc, dict):
        return "a document is a YAML mapping"
    if str(doc.get("schemaVersion")) != "1.0":
        return "schemaVersion must be 1.0"
    phases = doc.get("phases")
    if not isinstance(phases, list) or not phases:
        return "phases must list at least one phase"
    for p in phases:
        if p.get("name") not in ("build", "validate", "test"):
            return "phase %r is not build, validate or test" % p.get("name")
        names = set()
        for s in p.get("steps") or []:
            name = s.get("name")
            if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_]{1,128}", name):
                return "step name %r: letters, digits and _ only" % name
            if name in names:
                return "step name %r is used twice in phase %s" % (name, p["name"])
            names.add(name)
            if s.get("onFailure", "Abort") not in ("Abort", "Continue", "Ignore"):
                return "step %s: onFailure %r is not Abort, Continue or Ignore" % (name, s.get("onFailure"))
            t = s.get("timeoutSeconds")
            if t is not None and (not isinstance(t, int) or not (t == -1 or 1 <= t <= 86400)):
                return "step %s: timeoutSeconds %r" % (name, t)
            if s.get("action") == "ExecuteBash":
                commands = (s.get("inputs") or {}).get("commands")
                if not isinstance(commands, list) or not commands:
                    return "step %s: ExecuteBash needs inputs.commands" % name
    return None
