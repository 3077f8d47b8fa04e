"""What runs a pod on an EKS node, for the emulated clusters (kubeapi.py): the kubelet, the
container runtime, the Amazon VPC CNI and the cluster DNS service the pod asks.

On a node that is a real VM (machines.py), it all happens in the guest, through the guest agent:
- The node registers when its guest agent first answers (the kubelet starts with the OS), after
  the node-level wiring below.
- **VPC CNI** (aws/amazon-vpc-cni-k8s v1.20.0, cmd/routed-eni-cni-plugin/driver/driver.go
  createVethPairContext.run, setupIPBasedContainerRouteRules): the veth pair is made inside the
  pod's network namespace, its host end (`eni` + the first 11 hex of SHA-1 of
  "<namespace>.<pod>", pkg/networkutils/names.go GeneratePodHostVethName) moved to the host; the
  host end keeps the MAC the kernel gave it — v1.20.1 (#3354) sets one "bypassing udev", and
  the stand-in is the version the MAC-policy incident happened with; in the pod: 169.254.1.1/32
  scope link, default via it, the pod's /32, and a permanent neighbour entry for 169.254.1.1 with
  the host end's MAC as read when it was made; on the host: the pod's /32 via the host end
  (scope link) and `to <pod IP> lookup main` at priority 512. DEL removes the routes and the rule;
  the veth goes with the namespace. Only one ENI: no `from` rules.
- **Container runtime**: the image's filesystem in /var/lib/bake-standin/pods/<uid>/rootfs, the
  container's command run in it (chroot, as the user its securityContext names) in the pod's
  network namespace with its own /proc,
  /sys and a /dev of the devices a runtime gives a container, its output in /var/log/pods/<namespace>_<pod>_<uid>/<container>/0.log (the CRI log path,
  plain lines: the API server returns the text only). One image is held: busybox (the host's
  busybox-static, for a VM of the host's architecture); any other is ErrImagePull, then
  ImagePullBackOff, as a registry that does not have it answers.
- **kubelet** (kubernetes pkg/kubelet/network/dns/dns.go, dnsPolicy ClusterFirst): the pod's
  /etc/resolv.conf names only the cluster DNS service, searches <ns>.svc.cluster.local,
  svc.cluster.local, cluster.local, with options ndots:5; the cluster DNS address is the service
  CIDR's .10 (amazon-eks-ami nodeadm/internal/api/net.go GetClusterDns; 10.100.0.0/16).
- **The VPC and CoreDNS**, which are not on the node: a network namespace on the VM holds the
  cluster DNS service's address and answers A queries for kubernetes.default.svc.cluster.local
  (the API server's service, 10.100.0.1) and NXDOMAIN for any other name (CoreDNS's kubernetes
  plugin), reached from the node through a veth pair whose MACs are set (a VPC's fabric is not
  subject to the node's udev). kube-proxy's DNAT of the service address to a CoreDNS pod is not
  emulated: the address is the endpoint's own. IP forwarding on as the AL2023 EKS AMI sets it
  (templates/al2023/runtime/rootfs/etc/sysctl.d/99-kubernetes-cri.conf).

A node that is not a VM (a scripted instance) runs no container by itself: a pod bound to it
stays ContainerCreating unless the test's config has a "pods" rule whose "match" is in the
container's command; then it runs (Running) and its log is the rule's "log" (a text, or lines
printed one every "line_every_s").
"""
import base64
import hashlib
import os
import platform
import shutil
import threading
import time

STATE = "/var/lib/bake-standin"       # as containerd keeps its snapshots under /var/lib
SERVICE_DNS = "10.100.0.10"
KUBERNETES_SERVICE = "10.100.0.1"
PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
HOST_ARCH = {"x86_64": "x86_64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())

NODE_SETUP = r"""set -eu
echo 1 > /proc/sys/net/ipv4/ip_forward
mkdir -p "$STATE"
ip netns add bake-standin-vpc
ip link add vpc0 address 02:42:0a:64:00:01 type veth peer name eth0 address 02:42:0a:64:00:0a netns bake-standin-vpc
ip link set vpc0 up
echo 1 > /proc/sys/net/ipv4/conf/vpc0/proxy_arp
ip -n bake-standin-vpc link set lo up
ip -n bake-standin-vpc link set eth0 up
ip -n bake-standin-vpc addr add "$SERVICE_DNS/32" dev eth0
ip -n bake-standin-vpc route add default dev eth0
ip route add "$SERVICE_DNS/32" dev vpc0
"""

# The CoreDNS stand-in: A for the API server's service, NXDOMAIN for anything else.
COREDNS = r"""import socket, struct, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 53))
want, answer = b"kubernetes.default.svc.cluster.local", socket.inet_aton(sys.argv[2])
while True:
    q, peer = s.recvfrom(512)
    if len(q) < 12:
        continue
    i, labels = 12, []
    while i < len(q) and q[i]:
        labels.append(q[i + 1:i + 1 + q[i]]); i += 1 + q[i]
    qtype = struct.unpack(">H", q[i + 1:i + 3])[0] if i + 3 <= len(q) else 0
    question = q[12:i + 5]
    found = b".".join(labels).lower() == want
    an = b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 5, 4) + answer if found and qtype == 1 else b""
    flags = 0x8180 if found else 0x8183
    s.sendto(q[:2] + struct.pack(">HHHHH", flags, 1, 1 if an else 0, 0, 0) + question + an, peer)
"""

POD_ADD = r"""set -eu
ip netns add "$NETNS"
ip -n "$NETNS" link add eth0 type veth peer name "$HOST_VETH"
mac=$(ip -n "$NETNS" -o link show "$HOST_VETH" | sed -n 's/.*link\/ether \([0-9a-f:]*\).*/\1/p')
ip -n "$NETNS" link set "$HOST_VETH" netns 1
ip link set "$HOST_VETH" up
ip -n "$NETNS" link set lo up
ip -n "$NETNS" link set eth0 up
ip -n "$NETNS" route replace 169.254.1.1/32 dev eth0 scope link
ip -n "$NETNS" route add default via 169.254.1.1 dev eth0
ip -n "$NETNS" addr add "$POD_IP/32" dev eth0
ip -n "$NETNS" neigh add 169.254.1.1 dev eth0 lladdr "$mac" nud permanent
ip route replace "$POD_IP/32" dev "$HOST_VETH" scope link
ip rule add to "$POD_IP" lookup main priority 512
mkdir -p "$ROOT/bin" "$ROOT/etc" "$ROOT/proc" "$ROOT/sys" "$ROOT/dev" "$ROOT/tmp" "$(dirname "$LOG")"
install -m 0755 "$STATE/busybox" "$ROOT/bin/busybox"
for applet in $("$ROOT/bin/busybox" --list); do [ "$applet" = busybox ] || ln -sf busybox "$ROOT/bin/$applet"; done
printf 'search %s.svc.cluster.local svc.cluster.local cluster.local\nnameserver %s\noptions ndots:5\n' "$NAMESPACE" "$SERVICE_DNS" > "$ROOT/etc/resolv.conf"
: > "$LOG"
"""

# Runs in the pod's network namespace (ip netns exec gives it its own mounts and /sys).
CONTAINER = r"""exec >> "$LOG" 2>&1
mount -t proc proc "$ROOT/proc"
mount -t sysfs sysfs "$ROOT/sys"
mount -t tmpfs -o mode=755 tmpfs "$ROOT/dev"
for d in null zero full random urandom tty; do : > "$ROOT/dev/$d"; mount --bind "/dev/$d" "$ROOT/dev/$d"; done
exec chroot --userspec="$RUN_AS" "$ROOT" "$@"
"""

POD_DEL = r"""ip netns pids "$NETNS" 2>/dev/null | xargs -r kill -9
ip rule del to "$POD_IP" lookup main priority 512 2>/dev/null
ip route del "$POD_IP/32" dev "$HOST_VETH" 2>/dev/null
ip netns del "$NETNS" 2>/dev/null
rm -rf "$ROOT"
exit 0
"""


def host_veth_name(namespace, name):
    return "eni" + hashlib.sha1(("%s.%s" % (namespace, name)).encode()).hexdigest()[:11]


def image_name(ref):
    """The repository's last path element, without tag or digest."""
    return ref.split("@", 1)[0].rsplit("/", 1)[-1].split(":", 1)[0]


class Kubelet:
    def __init__(self, machines, config):
        self.machines = machines        # machines.Machines
        self.config = config            # the test's config, read when asked
        self.lock = threading.Lock()
        self.nodes = {}                 # instance -> "setting-up" | "up" | "failed: ..."
        self.pods = {}                  # uid -> pod state

    # --- nodes ------------------------------------------------------------------------------
    def is_vm(self, instance):
        return self.machines.owns(instance)

    def node_up(self, instance):
        """True once the VM's kubelet would have registered: its guest agent answers and the
        node's wiring is done (started here the first time the agent answers)."""
        with self.lock:
            state = self.nodes.get(instance)
        if state == "up":
            return True
        if state is not None:
            return False
        try:
            vm = self.machines.vm(instance)
        except KeyError:
            return False
        if not vm.running() or not vm.agent.ping(timeout=1):
            return False
        with self.lock:
            if instance in self.nodes:
                return False
            self.nodes[instance] = "setting-up"
        threading.Thread(target=self.set_up_node, args=(instance, vm), daemon=True).start()
        return False

    def set_up_node(self, instance, vm):
        try:
            env = [PATH, "STATE=" + STATE, "SERVICE_DNS=" + SERVICE_DNS]
            self.sh(vm, NODE_SETUP, env)
            with open(shutil.which("busybox") or "/bin/busybox", "rb") as f:
                vm.agent.write_file(STATE + "/busybox", f.read())
            vm.agent.write_file(STATE + "/coredns.py", COREDNS.encode())
            vm.agent.start(["/bin/sh", "-c", 'exec ip netns exec bake-standin-vpc python3 "$1" "$2" "$3" > "$4" 2>&1',
                            "sh", STATE + "/coredns.py", SERVICE_DNS, KUBERNETES_SERVICE, STATE + "/coredns.log"],
                           env=[PATH])
            state = "up"
        except Exception as e:
            state = "failed: %s" % e
        with self.lock:
            self.nodes[instance] = state

    @staticmethod
    def sh(vm, script, env, timeout=120):
        pid = vm.agent.start(["/bin/sh", "-c", script], env=env)
        st = vm.agent.wait(pid, timeout)
        if st is None or st.get("exitcode") != 0:
            err = base64.b64decode((st or {}).get("err-data", "")).decode(errors="replace")
            raise RuntimeError("exit %s: %s" % ((st or {}).get("exitcode"), err.strip()[-500:]))
        return base64.b64decode(st.get("out-data", "")).decode(errors="replace")

    # --- pods -------------------------------------------------------------------------------
    def run_pod(self, pod, instance, pod_ip):
        """Starts the pod on its node; its state is read with `state`."""
        uid = pod["metadata"]["uid"]
        container = pod["spec"]["containers"][0]
        p = {"waiting": "ContainerCreating", "message": "", "pid": None, "exit": None, "vm": None,
             "rule": None, "env": None, "instance": instance, "started": None}
        with self.lock:
            self.pods[uid] = p
        command = list(container.get("command") or []) + list(container.get("args") or [])
        if not self.is_vm(instance):
            for rule in self.config().get("pods", []):
                if rule.get("match") and rule["match"] in "\n".join(command):
                    p.update(waiting=None, rule=rule, started=time.time())
                    break
            return
        threading.Thread(target=self.start_container, args=(pod, instance, pod_ip, container, command, p),
                         daemon=True).start()

    def _start_container(self, pod, instance, pod_ip, container, command, p):
        meta = pod["metadata"]
        ns, name, uid = meta["namespace"], meta["name"], meta["uid"]
        try:
            vm = self.machines.vm(instance)
        except KeyError:
            return
        if image_name(container["image"]) != "busybox" or vm.image.get("arch", "x86_64") != HOST_ARCH:
            p.update(waiting="ErrImagePull",
                     message='failed to pull and unpack image "%s": not found' % container["image"])
            time.sleep(10)
            p["waiting"] = "ImagePullBackOff"
            p["message"] = 'Back-off pulling image "%s"' % container["image"]
            return
        # The user it runs as: the container's securityContext, else the pod's, else the
        # image's (busybox: root); runAsNonRoot refuses root as the kubelet does
        # (pkg/kubelet/kuberuntime/security_context_others.go verifyRunAsNonRoot).
        pod_sc, c_sc = pod["spec"].get("securityContext") or {}, container.get("securityContext") or {}
        user = c_sc.get("runAsUser", pod_sc.get("runAsUser", 0))
        group = c_sc.get("runAsGroup", pod_sc.get("runAsGroup", 0))
        if c_sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) and user == 0:
            p.update(waiting="CreateContainerConfigError",
                     message="container has runAsNonRoot and image will run as root")
            return
        log_path = "/var/log/pods/%s_%s_%s/%s/0.log" % (ns, name, uid, container["name"])
        env = [PATH, "STATE=" + STATE, "SERVICE_DNS=" + SERVICE_DNS, "NAMESPACE=" + ns,
               "RUN_AS=%d:%d" % (user, group),
               "NETNS=cni-" + uid, "HOST_VETH=" + host_veth_name(ns, name), "POD_IP=" + pod_ip,
               "ROOT=%s/pods/%s/rootfs" % (STATE, uid),
               "LOG=" + log_path]
        p.update(vm=vm, env=env, log_path=log_path)
        try:
            self.sh(vm, POD_ADD, env)
            p["pid"] = vm.agent.start(["ip", "netns", "exec", "cni-" + uid, "/bin/sh", "-c", CONTAINER, "sh"] + command,
                                      env=env)
            p.update(waiting=None, started=time.time())
        except Exception as e:
            p.update(waiting="CreateContainerError", message=str(e)[-300:])

    def start_container(self, pod, instance, pod_ip, container, command, p):
        """The container started, or why not (a fault of the stand-in itself is a
        CreateContainerError naming it, never a pod left ContainerCreating without a word)."""
        try:
            self._start_container(pod, instance, pod_ip, container, command, p)
        except Exception as e:
            p.update(waiting="CreateContainerError", message="stand-in kubelet: %r" % e)

    def state(self, uid):
        """(phase, containerStatus.state) of a pod, as the kubelet reports them."""
        with self.lock:
            p = self.pods.get(uid)
        if p is None:
            return "Pending", {"waiting": {"reason": "ContainerCreating"}}
        if p["waiting"]:
            w = {"reason": p["waiting"]}
            if p["message"]:
                w["message"] = p["message"]
            return "Pending", {"waiting": w}
        if p["pid"] is not None and p["exit"] is None:
            try:
                st = p["vm"].agent.status(p["pid"])
                if st.get("exited"):
                    p["exit"] = st.get("exitcode", 128 + st.get("signal", 0))
            except Exception:
                pass
        started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(p["started"]))
        if p["exit"] is None:
            return "Running", {"running": {"startedAt": started}}
        # containerd's reasons (internal/cri/server/helpers.go): Completed for 0, Error otherwise.
        return ("Succeeded" if p["exit"] == 0 else "Failed",
                {"terminated": {"exitCode": p["exit"], "reason": "Completed" if p["exit"] == 0 else "Error",
                                "startedAt": started}})

    def log(self, uid):
        """The container's output, or None while it has not started."""
        with self.lock:
            p = self.pods.get(uid)
        if p is None or p["waiting"]:
            return None
        if p["vm"] is None:
            # A rule's log: a text, or lines printed one every line_every_s since the start.
            log = p["rule"].get("log", "")
            if isinstance(log, list):
                every = float(p["rule"].get("line_every_s", 0))
                shown = len(log) if every <= 0 else int((time.time() - p["started"]) / every) + 1
                log = "".join(line + "\n" for line in log[:shown])
            return log.encode()
        try:
            return p["vm"].agent.read_file(p["log_path"])
        except Exception:
            return b""

    def delete(self, uid):
        """Stops the pod's container and tears its network down (CNI DEL), in the background."""
        with self.lock:
            p = self.pods.pop(uid, None)
        if p is None or p["vm"] is None:
            return
        threading.Thread(target=self._teardown, args=(p,), daemon=True).start()

    def _teardown(self, p):
        try:
            self.sh(p["vm"], POD_DEL, p["env"])
        except Exception:
            pass
