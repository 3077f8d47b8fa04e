#!/usr/bin/env python3
"""The tests' own HTTP proxy in front of moto_server, for exactly what moto 5.2.5 cannot do
(docs/testing.md): SSM agent status, the outcome of RunCommand scripts, the public base-image
parameters under /aws/service/, and AWS-like delays. Everything else is forwarded untouched.

Config: a JSON file re-read on every request, so a test can change it between runs:
  {"parameters": {"/aws/service/...": "ami-..."},
   "commands": [{"match": "validator mac-policy", "status": "Failed", "exit_code": 1,
                 "stdout": "udev rewrote the veth MAC"}],
   "default_stdout": {"dpkg-query": "apt\t2.6.1\tamd64\n"},
   "agent_online_after_s": 0, "delay_ms": 0,
   "faults": [{"action": "RunInstances", "times": 2, "code": "RequestLimitExceeded", "status": 400,
               "after": "CreateImage"}],
   "image_state_after_create": "failed",
   "image_available_after_s": 0, "copy_available_after_s": 0}
The agent of an instance comes online agent_online_after_s after RunInstances answered (it boots
with the instance, whoever asks; an instance the proxy did not see launch: after it is first
asked about). A new image is pending image_available_after_s after CreateImage answered, a copy
copy_available_after_s after CopyImage (image_available_after_s if not given).
EnableImageDeprecation / DisableImageDeprecation, which moto 5.2.5 lacks, are answered here as
EC2 documents them (the image must exist; DeprecateAt not in the past, at most 10 years ahead,
seconds rounded to the minute), and DescribeImages then shows each image's deprecationTime.
Enable/DisableImageDeregistrationProtection likewise: DescribeImages shows
deregistrationProtection (enabled-without-cooldown, enabled-with-cooldown, or disabled-until
<24 h later> after disabling one with a cooldown), and DeregisterImage of a protected image fails
(OperationNotPermitted; EC2 documents the refusal, not its code).
  "deprecations_aged_s": N
shows every deprecation time N seconds earlier than it was set: time passing for a grace period.
Faults answer the first `times` calls of `action` (after a call of `after`, if given) with an
AWS error, before moto sees them: throttling, 5xx, eventual-consistency errors.
Every request is appended to calls.jsonl next to the config (service, action), so tests can
count mutating calls.
  "hold": {"action": "PutParameter", "contains": "/releases/"}
holds each call of `action` whose logged record contains `contains`, after logging it, until the
config no longer has that hold (at most 120 s): a test kills bake while AWS has the request in
hand, then lifts the hold and the call lands, as when a process dies mid-call.

  "machines": {"dir": "/tmp/...", "images": {"ami-...": {"disk": "base.qcow2", "kernel": "vmlinuz",
               "initrd": "initrd.img", "arch": "x86_64"}}, "cpus": 2, "memory_mib": 1536}
makes instances of those images (and of images created from them) real VMs (machines.py):
An image's optional "root" is the kernel's root= (default /dev/vda): "LABEL=..." or "UUID=..."
boots by filesystem label or UUID, as the vendors' images do; images made from it keep it.
their agent status, commands, stop, images and termination come from the VM, not from rules.

EKS: DescribeCluster also carries the cluster's authentication mode and cluster security group,
and the access-entry and access-policy calls and UpdateClusterConfig's access config are
answered as EKS does (eks.py), which moto 5.2.5 lacks. Each cluster has a Kubernetes API server
of its own (its endpoint and CA in DescribeCluster) that authenticates EKS tokens and serves the
nodes that instances launched with join user data register (kubeapi.py): "node_ready_after_s"
(-1: never) is how long a registered node stays NotReady. It runs pods on them (kubelet.py): on
a VM as the kubelet, containerd, the VPC CNI and CoreDNS would; on a scripted instance by the
config's "pods" rules ({"match": <text in the command>, "log": text or lines,
"line_every_s": s}). Its requests, and the pods' states as bake read them, go to kube.jsonl.
STS: moto names an unknown key's caller `arn:aws:sts::<account>:user/moto`; STS writes a user's
ARN in the iam namespace, so GetCallerIdentity says `arn:aws:iam::<account>:user/moto`.
"""
import base64
import http.server
import json
import re
import os
import sys
import threading
import time
import urllib.parse
import urllib.request

sys.dont_write_bytecode = True  # no __pycache__ in the checkout
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import machines as machines_mod  # noqa: E402
import eks as eks_mod  # noqa: E402
import imagebuilder as imagebuilder_mod  # noqa: E402
import kubeapi  # noqa: E402
import kubelet  # noqa: E402
import documents  # noqa: E402

UPSTREAM = sys.argv[1]          # http://127.0.0.1:<moto port>
CONFIG = sys.argv[2]
PORT = int(sys.argv[3]) if len(sys.argv) > 3 else 0
CALLS = os.path.join(os.path.dirname(CONFIG), "calls.jsonl")
LOCK = threading.Lock()
# A script of a batch as bake's guest/batch.rs sends it: its header, then its bytes in base64.
BATCH_JOB = re.compile(r"^# bake-job (\d+): (.*)\necho '([A-Za-z0-9+/=]*)' \| base64 -d", re.M)
OUTCOMES = {}                   # command id -> rule
# A script whose whole body is one `case '<word>' in ... esac` (the audit documents' form, their
# action filled in): a scripted instance, having no shell, takes the branch the word selects.
CASE = re.compile(r"^case '([^']*)' in\n(.*)^esac\n?\Z", re.M | re.S)


def selected_branch(text):
    m = CASE.search(text)
    if m is None:
        return text
    for branch in re.finditer(r"^([A-Za-z0-9_-]+)\)\n(.*?)^;;$", m.group(2), re.M | re.S):
        if branch.group(1) == m.group(1):
            return text[:m.start()] + branch.group(2)
    return text[:m.start()]

FIRST_ASKED = {}                # instance id -> RunInstances answer, or first DescribeInstanceInformation
FAULTS_USED = {}                # fault index -> times injected
CREATED_AT = {}                 # image id -> (when CreateImage or CopyImage answered, action)
SEEN = set()                    # actions seen so far (for faults that start "after" one)
DEPRECATIONS = {}               # image id -> DeprecationTime (moto 5.2.5 has no deprecation)
PROTECTION = {}                 # image id -> deregistrationProtection (moto 5.2.5 has none)


def rest_action(method, path):
    """The action of an EKS REST call, as IAM names it (the calls bake makes)."""
    parts = [p for p in path.split("/") if p]
    if parts[:1] == ["clusters"] and len(parts) == 2 and method == "GET":
        return "DescribeCluster"
    if parts[:1] == ["clusters"] and len(parts) == 1 and method == "GET":
        return "ListClusters"
    return eks_mod.EksAccess.action(method, path) or "%s %s" % (method, path)


PAGED_EC2 = {"DescribeImages": b"imagesSet", "DescribeInstances": b"reservationSet",
             "DescribeSecurityGroups": b"securityGroupInfo", "DescribeSnapshots": b"snapshotSet",
             "DescribeLaunchTemplates": b"launchTemplates",
             "DescribeLaunchTemplateVersions": b"launchTemplateVersionSet", "DescribeVolumes": b"volumeSet"}
PAGE = 5


def paginate(data, action, page, size=PAGE):
    """Cuts an EC2 answer to items [page, page+size) of its list and adds a nextToken if more."""
    tag = PAGED_EC2[action]
    start = data.find(b"<" + tag + b">")
    end = data.rfind(b"</" + tag + b">")
    if start < 0 or end < 0:
        return data
    inner_start = start + len(tag) + 2
    items, depth, item_start = [], 0, None
    for m in re.finditer(rb"<(/?)item>", data[inner_start:end]):
        if m.group(1) == b"":
            if depth == 0:
                item_start = inner_start + m.start()
            depth += 1
        else:
            depth -= 1
            if depth == 0:
                items.append(data[item_start:inner_start + m.end()])
    chosen = items[page:page + size]
    out = data[:inner_start] + b"".join(chosen) + data[end:]
    if page + size < len(items):
        close = out.rfind(b"</")
        out = out[:close] + b"<nextToken>proxy-page-%d</nextToken>" % (page + size) + out[close:]
    return out


def limits(service, action, form, record):
    """The limits EC2 and SSM enforce and moto does not: an error to answer, or None."""
    if service == "ec2":
        # EC2 API reference, "Filter": up to 50 filters and 200 values per filter in a request.
        values = {}
        for k in form:
            m = re.fullmatch(r"Filter\.(\d+)\.Value\.\d+", k)
            if m:
                values[m.group(1)] = values.get(m.group(1), 0) + 1
        if len({re.fullmatch(r"Filter\.(\d+)\..*", k).group(1) for k in form if k.startswith("Filter.")}) > 50 \
                or any(n > 200 for n in values.values()):
            return {"code": "FilterLimitExceeded", "status": 400,
                    "message": "The maximum number of filter values specified on a single call is 200"}
        specs = {}
        for k, vs in form.items():
            m = re.fullmatch(r"(TagSpecification\.\d+\.)?Tag\.(\d+)\.(Key|Value)", k)
            if m:
                specs.setdefault(m.group(1) or "", {}).setdefault(m.group(2), {})[m.group(3)] = vs[0]
        for spec, tags in specs.items():
            for t in tags.values():
                if len(t.get("Key", "")) > 128:
                    return {"code": "InvalidParameterValue", "status": 400, "message": "Tag key exceeds the maximum length of 128 characters"}
                if len(t.get("Value", "")) > 256:
                    return {"code": "InvalidParameterValue", "status": 400, "message": "Tag value exceeds the maximum length of 256 characters"}
            keys = {t.get("Key") for t in tags.values()}
            if spec == "" and action == "CreateTags":
                for rid, existing in (record.get("tags") or {}).items():
                    if len(keys | set(existing)) > 50:
                        return {"code": "TagLimitExceeded", "status": 400, "message": "The maximum number of tags (50) for resource %s has been reached" % rid}
            elif len(keys) > 50:
                return {"code": "TagLimitExceeded", "status": 400, "message": "The maximum number of tags (50) has been reached"}
    if service == "ssm" and action == "PutParameter":
        req = record.get("body") or {}
        value, tier = req.get("Value", ""), req.get("Tier", "Standard")
        cap = 8192 if tier in ("Advanced", "Intelligent-Tiering") else 4096
        if len(value.encode()) > cap:
            return {"code": "ValidationException", "status": 400, "message": "%s tier parameters support a maximum parameter value of %d characters" % (tier, cap)}
        if len(req.get("Description", "")) > 1024:
            return {"code": "ValidationException", "status": 400, "message": "Description has a maximum length of 1024"}
    return None


def names_ids(form, action):
    """True if a Describe call lists resources by ID (EC2 answers those whole, unpaged); the
    versions of one launch template are paged all the same."""
    if action == "DescribeLaunchTemplateVersions":
        return False
    return any(re.fullmatch(r"(ImageId|InstanceId|GroupId|SnapshotId|VolumeId|LaunchTemplateId|LaunchTemplateName)(\.\d+)?", k)
               for k in form)


def encode_form(form):
    return urllib.parse.urlencode([(k, v) for k, vs in form.items() for v in vs]).encode()


def unescape(text):
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", '"').replace("&apos;", "'").replace("&amp;", "&")


def ec2_ids(form, action):
    """(region or None, resource ID) of every existing EC2 resource a call names."""
    ids = []
    for k, vs in form.items():
        v = vs[0]
        if re.fullmatch(r"(InstanceId(\.\d+)?|ImageId|ResourceId\.\d+|SnapshotId|BlockDeviceMapping\.\d+\.Ebs\.SnapshotId|GroupId|SecurityGroupId\.\d+|SubnetId|VpcId|VolumeId)", k):
            ids.append((None, v))
    if action == "CopyImage" and "SourceImageId" in form:
        ids.append((form.get("SourceRegion", [None])[0], form["SourceImageId"][0]))
    return ids


def split_tag_specs(form, only):
    """Removes the TagSpecifications (all, or only those of resource type `only`) from a form;
    returns the form and [(resource type, [(key, value)])] of what was removed."""
    specs = {}
    for k, vs in form.items():
        m = re.fullmatch(r"TagSpecification\.(\d+)\.(.*)", k)
        if m:
            specs.setdefault(m.group(1), {})[m.group(2)] = vs[0]
    removed, keep = [], set()
    for n, spec in specs.items():
        rtype = spec.get("ResourceType", "")
        if only is None or rtype == only:
            tags, i = [], 1
            while "Tag.%d.Key" % i in spec:
                tags.append((spec["Tag.%d.Key" % i], spec.get("Tag.%d.Value" % i, "")))
                i += 1
            removed.append((rtype, tags))
        else:
            keep.add(n)
    def removed_spec(k):
        m = re.fullmatch(r"TagSpecification\.(\d+)\..*", k)
        return m is not None and m.group(1) not in keep
    return {k: vs for k, vs in form.items() if not removed_spec(k)}, removed


def config():
    try:
        with open(CONFIG) as f:
            return json.load(f)
    except FileNotFoundError:
        return {}


class Proxy(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_POST(self):
        self.handle_any("POST")

    def do_GET(self):
        self.handle_any("GET")

    def do_DELETE(self):
        self.handle_any("DELETE")

    def do_PUT(self):
        self.handle_any("PUT")

    def handle_any(self, method):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        cfg = config()
        # SendCommand of one of the account's documents, as the shell command it amounts to.
        self.rendered = None
        target = self.headers.get("X-Amz-Target", "")
        # The signing scope names the service: Credential=<key>/<date>/<region>/<service>/aws4_request
        scope = re.search(r"Credential=[^/]+/[^/]+/([^/]+)/([^/]+)/", self.headers.get("Authorization", ""))
        form = {}
        if target:
            service, action = target.split(".", 1)
            service = "ssm" if "SSM" in service else service
        elif scope and scope.group(2) == "eks":
            service, action = "eks", rest_action(method, urllib.parse.urlparse(self.path).path)
        elif scope and scope.group(2) == "imagebuilder":
            service, action = "imagebuilder", urllib.parse.urlparse(self.path).path.strip("/")
        elif scope and scope.group(2) in ("iam", "sts"):
            form = urllib.parse.parse_qs(body.decode() or urllib.parse.urlparse(self.path).query)
            service, action = scope.group(2), (form.get("Action") or ["?"])[0]
        else:
            form = urllib.parse.parse_qs(body.decode() or urllib.parse.urlparse(self.path).query)
            service, action = "ec2", (form.get("Action") or ["?"])[0]
        region = scope.group(1) if scope else "us-east-1"
        key = re.search(r"Credential=([^/]+)/", self.headers.get("Authorization", ""))
        record = {"t": round(time.time(), 3), "service": service, "action": action, "region": region,
                  "key": key.group(1) if key else ""}
        if service == "ec2":
            record["params"] = {k: v[0] for k, v in form.items()}
            # The tags each referenced resource has now (aws:ResourceTag/* for IAM).
            record["tags"] = self.tags_of(ec2_ids(form, action), region)
        elif service == "ssm":
            req = json.loads(body or b"{}")
            record["body"] = req
            if action == "SendCommand":
                record["tags"] = self.tags_of([(None, i) for i in req.get("InstanceIds") or []], region)
        elif service == "eks":
            record["path"] = urllib.parse.urlparse(self.path).path
        elif service == "imagebuilder":
            url = urllib.parse.urlparse(self.path)
            record["body"] = json.loads(body or b"{}") if method in ("PUT", "POST") else \
                {k: v[0] for k, v in urllib.parse.parse_qs(url.query).items()}
        elif service in ("iam", "sts"):
            record["params"] = {k: v[0] for k, v in form.items()}
        with LOCK:
            with open(CALLS, "a") as f:
                f.write(json.dumps(record) + "\n")
        hold = cfg.get("hold")
        if hold and hold.get("action") == action and hold.get("contains", "") in json.dumps(record):
            deadline = time.time() + 120
            while time.time() < deadline and config().get("hold") == hold:
                time.sleep(0.01)
        if cfg.get("delay_ms"):
            time.sleep(cfg["delay_ms"] / 1000.0)
        fault = self.fault(service, action, cfg)
        with LOCK:
            SEEN.add(action)
        if fault is not None:
            return self.error(service, fault)
        refused = limits(service, action, form, record)
        if refused is not None:
            return self.error(service, refused)
        page = None
        if service == "ec2" and action in PAGED_EC2 and not names_ids(form, action):
            # EC2 answers in pages whatever the caller asks; a caller that reads only the
            # first page misses the rest. Moto answers all at once: the proxy pages it by 5
            # (or by `ec2_page`, for tests that count calls at the size EC2 really answers:
            # up to 1000, at most what the caller asked for).
            token = (form.pop("NextToken", [""]) or [""])[0]
            asked = int((form.pop("MaxResults", [""]) or [""])[0] or 10 ** 6)
            page_size = min(asked, int(cfg.get("ec2_page") or PAGE))
            page = int(token[len("proxy-page-"):]) if token.startswith("proxy-page-") else 0
            body = encode_form(form)
        if service == "ssm" and action == "DescribeParameters":
            return self.describe_parameters(method, body, cfg)
        if service == "ssm" and action in ("GetParametersByPath", "GetParameterHistory"):
            # Pages of at most 5 (the real service stops at 10 or 50, and at any size it likes;
            # `ssm_page` sets the size for tests that count calls).
            req = json.loads(body or b"{}")
            cap = int(cfg.get("ssm_page") or 5)
            req["MaxResults"] = min(int(req.get("MaxResults") or cap), cap)
            body = json.dumps(req).encode()
        machine = MACHINES.configure(cfg)
        if service == "imagebuilder":
            status, answer = IMAGEBUILDER.handle(method, self.path, body, region)
            headers = [("Content-Type", "application/json")]
            if "__type" in answer:
                headers.append(("x-amzn-ErrorType", answer["__type"]))
            return self.send_raw(status, headers, json.dumps(answer).encode())
        if service == "ec2" and action in ("EnableImageDeprecation", "DisableImageDeprecation"):
            return self.deprecation(action, form, region)
        if service == "ec2" and action in ("EnableImageDeregistrationProtection", "DisableImageDeregistrationProtection"):
            return self.protection(action, form, region)
        if service == "ec2" and action == "DeregisterImage":
            image = (form.get("ImageId") or [""])[0]
            if self.protected_now(image):
                return self.error("ec2", {"code": "OperationNotPermitted",
                                          "message": "The AMI %s has deregistration protection (%s)" % (image, PROTECTION[image])})
        if service == "ssm":
            req = json.loads(body or b"{}")
            handled = self.ssm(action, req, cfg, region)
            if handled is not None:
                return self.reply(200, handled)
        if service == "eks":
            handled = EKS.handle(method, self.path, body, region, lambda name: self.moto_eks_cluster(region, name))
            if handled is not None:
                return self.send_raw(*handled)
        # moto 5.2.5 answers 500 to a snapshot TagSpecification on CreateImage and ignores
        # CopyImage's TagSpecifications; EC2 applies both to the new image and its snapshots.
        # Forward without them and apply them as EC2 would.
        deferred = []
        if service == "ec2" and action in ("CreateImage", "CopyImage"):
            form, deferred = split_tag_specs(form, "snapshot" if action == "CreateImage" else None)
            body = encode_form(form)
        status, headers, data = self.forward(method, body)
        if service == "ec2" and action in ("CreateImage", "CopyImage") and status == 200:
            m = re.search(rb"<imageId>([^<]+)</imageId>", data)
            if m:
                image = m.group(1).decode()
                CREATED_AT[image] = (time.time(), action)
                self.apply_tag_specs(image, deferred, region)
        waits = {"CreateImage": cfg.get("image_available_after_s", 0)}
        waits["CopyImage"] = cfg.get("copy_available_after_s", waits["CreateImage"])
        if any(waits.values()) and service == "ec2" and action == "DescribeImages":
            def pend(m):
                created, how = CREATED_AT.get(m.group(1).decode(), (None, None))
                if created is not None and time.time() - created < waits[how]:
                    return m.group(0).replace(b"<imageState>available</imageState>", b"<imageState>pending</imageState>")
                return m.group(0)
            data = re.sub(rb"<imageId>([^<]+)</imageId>.*?</item>", pend, data, flags=re.S)
        if service == "ec2" and action == "DescribeImages" and status == 200 and DEPRECATIONS:
            aged = float(cfg.get("deprecations_aged_s", 0))

            def deprecated(m):
                import datetime
                at = DEPRECATIONS.get(m.group(1).decode())
                if not at:
                    return m.group(0)
                if aged:
                    t = datetime.datetime.strptime(at, "%Y-%m-%dT%H:%M:%S.000Z") - datetime.timedelta(seconds=aged)
                    at = t.strftime("%Y-%m-%dT%H:%M:%S.000Z")
                return m.group(0) + b"<deprecationTime>%s</deprecationTime>" % at.encode()
            data = re.sub(rb"<imageId>([^<]+)</imageId>", deprecated, data)
        if service == "ec2" and action == "DescribeImages" and status == 200 and PROTECTION:
            def protection(m):
                state = PROTECTION.get(m.group(1).decode())
                return m.group(0) + (b"<deregistrationProtection>%s</deregistrationProtection>" % state.encode() if state else b"")
            data = re.sub(rb"<imageId>([^<]+)</imageId>", protection, data)
        if service == "ec2" and action == "DeregisterImage" and status == 200:
            DEPRECATIONS.pop((form.get("ImageId") or [""])[0], None)
            PROTECTION.pop((form.get("ImageId") or [""])[0], None)
        if page is not None and status == 200:
            data = paginate(data, action, page, page_size)
        if service == "eks" and action == "DescribeCluster" and status == 200:
            cluster = urllib.parse.unquote(urllib.parse.urlparse(self.path).path.split("/")[2])
            data = EKS.describe(region, cluster, data)
        if service == "sts" and action == "GetCallerIdentity" and status == 200:
            data = re.sub(rb"<Arn>([^<]+)</Arn>",
                          lambda m: b"<Arn>%s</Arn>" % kubeapi.fix_moto_identity(m.group(1).decode()).encode(), data)
        state = cfg.get("image_state_after_create")
        if state and service == "ec2" and action == "DescribeImages" and "CreateImage" in SEEN:
            data = data.replace(b"<imageState>available</imageState>", ("<imageState>%s</imageState>" % state).encode())
        if service == "ssm" and action == "SendCommand" and status == 200:
            req, resp = self.rendered or json.loads(body or b"{}"), json.loads(data or b"{}")
            MACHINES.send_command(req, (resp.get("Command") or {}).get("CommandId"))
            self.remember(req, resp, cfg)
        if service == "ec2" and action == "RunInstances" and status == 200:
            now = time.time()
            for i in re.findall(rb"<instanceId>([^<]+)</instanceId>", data):
                FIRST_ASKED.setdefault(i.decode(), now)
            # Instances that join a cluster register their node (kubeapi.py, kubelet.py).
            APIS.run_instances(region, form, data, cfg, now, vm=machine is not None)
        if service == "ec2" and action == "TerminateInstances" and status == 200:
            APIS.terminate_instances(form)
        if service == "ec2" and status == 200 and machine is not None:
            if action == "RunInstances":
                MACHINES.run_instances(region, form, data, machine)
            elif action == "StopInstances":
                MACHINES.stop_instances(form)
            elif action == "CreateImage":
                MACHINES.create_image(region, form, data)
            elif action == "TerminateInstances":
                MACHINES.terminate_instances(form)
            elif action == "DeregisterImage":
                MACHINES.deregister_image(form)
            elif action == "CreateVolume":
                MACHINES.create_volume(region, form, data)
            elif action == "AttachVolume":
                MACHINES.attach_volume(form)
            elif action == "DetachVolume":
                MACHINES.detach_volume(form)
            elif action == "DeleteVolume":
                MACHINES.delete_volume(form)
            elif action == "DescribeInstances":
                data = self.stopping_states(data)
        self.send_response(status)
        for k, v in headers:
            if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def stopping_states(self, data):
        """An instance whose VM is still shutting down is `stopping`, whatever moto says."""
        def state(m):
            if not MACHINES.stopping(m.group(2).decode()):
                return m.group(0)
            return m.group(1) + b"<code>64</code><name>stopping</name>"
        return re.sub(rb"(<instanceId>([^<]+)</instanceId>(?:(?!<instanceId>).)*?<instanceState>)\s*<code>\d+</code>\s*<name>[a-z-]+</name>",
                      state, data, flags=re.S)

    @staticmethod
    def moto_ec2(region, pairs):
        """A call straight to moto's EC2 in `region` (moto reads the region from the scope)."""
        data = urllib.parse.urlencode([("Version", "2016-11-15")] + pairs).encode()
        req = urllib.request.Request(UPSTREAM + "/", data=data, method="POST")
        req.add_header("Content-Type", "application/x-www-form-urlencoded; charset=utf-8")
        req.add_header("Authorization", "AWS4-HMAC-SHA256 Credential=testing/20260101/%s/ec2/aws4_request, SignedHeaders=host, Signature=0" % region)
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.read()

    @staticmethod
    def moto_iam(pairs):
        """(status, XML) of a call straight to moto's IAM."""
        data = urllib.parse.urlencode([("Version", "2010-05-08")] + pairs).encode()
        req = urllib.request.Request(UPSTREAM + "/", data=data, method="POST")
        req.add_header("Content-Type", "application/x-www-form-urlencoded; charset=utf-8")
        req.add_header("Authorization", "AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/iam/aws4_request, SignedHeaders=host, Signature=0")
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    @staticmethod
    def moto_eks_cluster(region, name):
        """True if moto's EKS has the cluster."""
        req = urllib.request.Request(UPSTREAM + "/clusters/" + urllib.parse.quote(name, safe=""), method="GET")
        req.add_header("Authorization", "AWS4-HMAC-SHA256 Credential=testing/20260101/%s/eks/aws4_request, SignedHeaders=host, Signature=0" % region)
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.status == 200
        except urllib.error.HTTPError:
            return False

    def send_raw(self, status, headers, data):
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def tags_of(self, ids, region):
        """{id: {key: value}} for these EC2 resource IDs, as they are tagged now."""
        out = {}
        for where, rid in ids:
            rgn = where or region
            try:
                xml = self.moto_ec2(rgn, [("Action", "DescribeTags"), ("Filter.1.Name", "resource-id"),
                                          ("Filter.1.Value.1", rid)]).decode()
            except Exception:
                xml = ""
            tags = {}
            for item in re.findall(r"<item>(.*?)</item>", xml, flags=re.S):
                k = re.search(r"<key>(.*?)</key>", item, flags=re.S)
                v = re.search(r"<value>(.*?)</value>", item, flags=re.S)
                if k:
                    tags[unescape(k.group(1))] = unescape(v.group(1)) if v else ""
            out[rid] = tags
        return out

    def apply_tag_specs(self, image, specs, region):
        if not specs:
            return
        xml = self.moto_ec2(region, [("Action", "DescribeImages"), ("ImageId.1", image)]).decode()
        snaps = re.findall(r"<snapshotId>([^<]+)</snapshotId>", xml)
        for rtype, tags in specs:
            targets = [image] if rtype == "image" else snaps
            if not targets or not tags:
                continue
            pairs = [("Action", "CreateTags")]
            pairs += [("ResourceId.%d" % (i + 1), t) for i, t in enumerate(targets)]
            for i, (k, v) in enumerate(tags):
                pairs += [("Tag.%d.Key" % (i + 1), k), ("Tag.%d.Value" % (i + 1), v)]
            self.moto_ec2(region, pairs)

    @staticmethod
    def protected_now(image):
        import datetime
        state = PROTECTION.get(image, "")
        if state.startswith("enabled"):
            return True
        if state.startswith("disabled-until "):
            until = datetime.datetime.strptime(state.split(" ", 1)[1], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.timezone.utc)
            return datetime.datetime.now(datetime.timezone.utc) < until
        return False

    def protection(self, action, form, region):
        """EC2's AMI deregistration protection, which moto lacks, held here per image."""
        import datetime
        image = (form.get("ImageId") or [""])[0]
        xml = self.moto_ec2(region, [("Action", "DescribeImages"), ("ImageId.1", image)]).decode()
        if "<imageId>%s</imageId>" % image not in xml:
            return self.error("ec2", {"code": "InvalidAMIID.NotFound", "message": "The image id '[%s]' does not exist" % image})
        if action == "EnableImageDeregistrationProtection":
            cooldown = (form.get("WithCooldown") or ["false"])[0].lower() == "true"
            PROTECTION[image] = "enabled-with-cooldown" if cooldown else "enabled-without-cooldown"
        elif PROTECTION.get(image) == "enabled-with-cooldown":
            until = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=24)
            PROTECTION[image] = "disabled-until " + until.strftime("%Y-%m-%dT%H:%M:%SZ")
        elif not (PROTECTION.get(image) or "").startswith("disabled-until"):
            PROTECTION.pop(image, None)
        data = ("<?xml version=\"1.0\" encoding=\"UTF-8\"?><%sResponse xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\">"
                "<requestId>proxy</requestId><return>true</return></%sResponse>" % (action, action)).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/xml")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def deprecation(self, action, form, region):
        """EC2's image deprecation, which moto lacks, held here per image."""
        import datetime
        image = (form.get("ImageId") or [""])[0]
        xml = self.moto_ec2(region, [("Action", "DescribeImages"), ("ImageId.1", image)]).decode()
        if "<imageId>%s</imageId>" % image not in xml:
            return self.error("ec2", {"code": "InvalidAMIID.NotFound", "message": "The image id '[%s]' does not exist" % image})
        if action == "DisableImageDeprecation":
            DEPRECATIONS.pop(image, None)
        else:
            raw = (form.get("DeprecateAt") or [""])[0]
            try:
                at = datetime.datetime.fromisoformat(raw.replace("Z", "+00:00"))
            except ValueError:
                return self.error("ec2", {"code": "InvalidParameterValue", "message": "DeprecateAt %r is not a timestamp" % raw})
            at = (at + datetime.timedelta(seconds=30)).replace(second=0, microsecond=0)
            now = datetime.datetime.now(datetime.timezone.utc)
            if at < now.replace(second=0, microsecond=0):
                return self.error("ec2", {"code": "InvalidParameterValue", "message": "DeprecateAt cannot be in the past"})
            if at > now + datetime.timedelta(days=3653):
                return self.error("ec2", {"code": "InvalidParameterValue", "message": "DeprecateAt is more than 10 years from now"})
            DEPRECATIONS[image] = at.strftime("%Y-%m-%dT%H:%M:%S.000Z")
        data = ("<?xml version=\"1.0\" encoding=\"UTF-8\"?><%sResponse xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\">"
                "<requestId>proxy</requestId><return>true</return></%sResponse>" % (action, action)).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/xml")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def fault(self, service, action, cfg):
        rnd = cfg.get("random_faults")
        if rnd:
            import random
            roll = random.random()
            if roll < rnd.get("throttle", 0):
                code = "ThrottlingException" if service == "ssm" else "RequestLimitExceeded"
                return {"code": code, "status": 400}
            if roll < rnd.get("throttle", 0) + rnd.get("server_error", 0):
                return {"code": "InternalError" if service == "ec2" else "InternalServerError", "status": 500}
            if rnd.get("max_latency_ms"):
                time.sleep(random.random() * rnd["max_latency_ms"] / 1000.0)
        for i, f in enumerate(cfg.get("faults", [])):
            if f.get("action") != action:
                continue
            if f.get("after") and f["after"] not in SEEN:
                continue
            with LOCK:
                used = FAULTS_USED.get(i, 0)
                if used >= f.get("times", 1):
                    continue
                FAULTS_USED[i] = used + 1
            return f
        return None

    def error(self, service, f):
        status = f.get("status", 400)
        code = f.get("code", "ThrottlingException")
        message = f.get("message", "injected by the test proxy")
        if service == "ssm":
            data = json.dumps({"__type": code, "message": message}).encode()
            ctype = "application/x-amz-json-1.1"
        else:
            data = ("<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response><Errors><Error><Code>%s</Code>"
                    "<Message>%s</Message></Error></Errors><RequestID>proxy</RequestID></Response>" % (code, message)).encode()
            ctype = "text/xml"
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def ssm(self, action, req, cfg, region):
        params = cfg.get("parameters", {})
        if action == "GetParameter" and req.get("Name", "").startswith("/aws/service/"):
            name = req["Name"]
            if name not in params:
                return {"__type": "ParameterNotFound", "message": name}
            return {"Parameter": {"Name": name, "Type": "String", "Value": params[name],
                                  "Version": 1, "DataType": "text", "ARN": "arn:aws:ssm:::parameter" + name}}
        if action == "DescribeInstanceInformation":
            ids = []
            for flt in req.get("Filters", []):
                if flt.get("Key") == "InstanceIds":
                    ids += flt.get("Values", [])
            for flt in req.get("InstanceInformationFilterList", []):
                if flt.get("key") == "InstanceIds":
                    ids += flt.get("valueSet", [])
            now = time.time()
            online = []
            for i in ids:
                if MACHINES.owns(i):
                    if MACHINES.online(i):
                        online.append({"InstanceId": i, "PingStatus": "Online", "PlatformType": "Linux"})
                    continue
                first = FIRST_ASKED.setdefault(i, now)
                if now - first >= cfg.get("agent_online_after_s", 0):
                    online.append({"InstanceId": i, "PingStatus": "Online", "PlatformType": "Linux"})
            return {"InstanceInformationList": online}
        if action == "SendCommand":
            # SSM's documented limits (API Reference, SendCommand): at most 50 instance IDs,
            # MaxConcurrency a number from 1 or a percentage, MaxErrors a number from 0 or a
            # percentage; anything else is a ValidationException.
            ids = req.get("InstanceIds") or []
            if len(ids) > 50:
                return {"__type": "ValidationException",
                        "message": "1 validation error detected: Value at 'instanceIds' failed to satisfy constraint: Member must have length less than or equal to 50"}
            for field, pattern in (("MaxConcurrency", r"([1-9][0-9]*|[1-9][0-9]%|[1-9]%|100%)"),
                                   ("MaxErrors", r"([1-9][0-9]*|[0]|[1-9][0-9]%|[0-9]%|100%)")):
                value = req.get(field)
                if value is not None and (len(value) > 7 or not re.fullmatch(pattern, value)):
                    return {"__type": "ValidationException",
                            "message": "1 validation error detected: Value '%s' at '%s' failed to satisfy constraint" % (value, field[0].lower() + field[1:])}
            # SSM refuses a command to a node whose agent is not online.
            down = [i for i in req.get("InstanceIds") or [] if MACHINES.owns(i) and not MACHINES.online(i)]
            if down:
                return {"__type": "InvalidInstanceId",
                        "message": "Instances [[%s]] not in a valid state for account 123456789012" % ", ".join(down)}
            # The account's own documents, which moto takes by any name and never runs.
            if not (req.get("DocumentName") or "").startswith("AWS-"):
                error, self.rendered = documents.render(UPSTREAM, region, req)
                if error is not None:
                    return error
        if action == "GetCommandInvocation":
            answer = MACHINES.invocation(req.get("CommandId"), req.get("InstanceId"))
            if answer is not None:
                return answer
            rule = OUTCOMES.get(req.get("CommandId"))
            if rule is not None:
                return {"CommandId": req["CommandId"], "InstanceId": req.get("InstanceId"),
                        "Status": rule.get("status", "Success"), "StatusDetails": rule.get("status", "Success"),
                        "ResponseCode": rule.get("exit_code", 0),
                        # GetCommandInvocation returns at most 24,000 characters of stdout
                        # and 8,000 of stderr; the rest is cut without a word.
                        "StandardOutputContent": rule.get("stdout", "")[:24000],
                        "StandardErrorContent": rule.get("stderr", "")[:8000]}
        return None

    def describe_parameters(self, method, body, cfg):
        """DescribeParameters as SSM pages it (API Reference: MaxResults 1-50, a
        ValidationException outside). Moto answers ten a page whatever is asked; the proxy
        pages by min(MaxResults, `ssm_describe_page`, default 5), reading moto's pages (its
        token is an offset) until the page is full."""
        req = json.loads(body or b"{}")
        asked = req.get("MaxResults")
        if asked is not None and not 1 <= int(asked) <= 50:
            return self.reply(400, {"__type": "ValidationException",
                                    "message": "1 validation error detected: Value '%s' at 'maxResults' failed to satisfy constraint: Member must have value %s" % (
                                        asked, "less than or equal to 50" if int(asked) > 50 else "greater than or equal to 1")})
        size = min(int(asked or 50), int(cfg.get("ssm_describe_page") or 5))
        start = int(req.get("NextToken") or 0)
        found, token = [], str(start)
        while token is not None and len(found) < size:
            req["NextToken"] = token
            status, headers, data = self.forward(method, json.dumps(req).encode())
            if status != 200:
                kept = [(k, v) for k, v in headers if k.lower() not in ("transfer-encoding", "connection", "content-length")]
                return self.send_raw(status, kept, data)
            page = json.loads(data or b"{}")
            found += page.get("Parameters") or []
            token = page.get("NextToken")
        out = {"Parameters": found[:size]}
        if len(found) > size or token is not None:
            out["NextToken"] = str(start + size)
        return self.reply(200, out)

    def remember(self, req, resp, cfg):
        text = selected_branch("\n".join((req.get("Parameters") or {}).get("commands") or []))
        command_id = (resp.get("Command") or {}).get("CommandId")
        instance = (req.get("InstanceIds") or [""])[0]
        jobs = BATCH_JOB.findall(text)
        if jobs:
            # A scripted instance has no shell: each script of a batch (bake's guest/batch.rs)
            # is answered by the rules as if it had been sent alone, in the batch's answer.
            OUTCOMES[command_id] = {"status": "Success", "exit_code": 0,
                                    "stdout": self.batch_answer(jobs, cfg, instance)}
            return
        rule = self.scripted(text, cfg, instance)
        if rule is not None:
            OUTCOMES[command_id] = rule

    @staticmethod
    def scripted(text, cfg, instance=""):
        """The test's rule for a command of this text, if one matches (a rule with an
        "instance" answers that instance's commands only)."""
        for rule in cfg.get("commands", []):
            if rule.get("instance") not in (None, instance):
                continue
            if rule.get("match") and rule["match"] in text:
                return rule
        for needle, stdout in cfg.get("default_stdout", {}).items():
            if needle in text:
                return {"status": "Success", "exit_code": 0, "stdout": stdout}
        return None

    def batch_answer(self, jobs, cfg, instance=""):
        out = ["bake-batch inline"]
        for index, label, script in jobs:
            text = "# bake: %s\n%s" % (label, base64.b64decode(script).decode("utf-8", "replace"))
            rule = self.scripted(text, cfg, instance) or {}
            # A script stopped at its limit exits as `timeout` makes it.
            code = 124 if rule.get("status") == "TimedOut" else rule.get("exit_code", 0)
            out.append("bake-job %s %d" % (index, code))
            for stream in ("stdout", "stderr"):
                out.append(base64.b64encode(rule.get(stream, "").encode()).decode())
        return "\n".join(out) + "\n"

    def forward(self, method, body):
        req = urllib.request.Request(UPSTREAM + self.path, data=body if method == "POST" else None, method=method)
        for k, v in self.headers.items():
            if k.lower() not in ("host", "content-length", "connection"):
                req.add_header(k, v)
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.status, r.getheaders(), r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.headers.items(), e.read()

    def reply(self, status, obj):
        data = json.dumps(obj).encode()
        if "__type" in obj:
            status = 400
        self.send_response(status)
        self.send_header("Content-Type", "application/x-amz-json-1.1")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


# The VMs behind instances (used by the handlers above; see machines.py).
MACHINES = machines_mod.Machines(Proxy.moto_ec2)
# Image Builder, whose builds run on those VMs (imagebuilder.py).
IMAGEBUILDER = imagebuilder_mod.ImageBuilder(Proxy.moto_ec2, Proxy.moto_iam, MACHINES, config)
# Who may join a cluster (authentication mode, access entries, cluster security group; eks.py).
EKS = eks_mod.EksAccess(Proxy.moto_ec2, Proxy.moto_iam)
# Each cluster's Kubernetes API server and the nodes that join it (kubeapi.py).
APIS = kubeapi.ClusterApis(UPSTREAM, EKS, Proxy.moto_iam, os.path.join(os.path.dirname(CONFIG), "kube.jsonl"),
                           kubelet.Kubelet(MACHINES, config))
EKS.apis = APIS
server = http.server.ThreadingHTTPServer(("127.0.0.1", PORT), Proxy)
print(server.server_address[1], flush=True)
server.serve_forever()
