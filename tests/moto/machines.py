"""Real machines behind the emulator's EC2 instances, for the rehearsal tier (see proxy.py).

An instance launched from an image this module knows is a QEMU VM booted from a copy-on-write
disk of that image; everything the instance's API answers comes from the VM:

- RunInstances: the VM boots with the user data delivered as EC2 delivers it to cloud-init
  (here NoCloud's user-data, unchanged), an SMBIOS UUID of its own, the root volume resized to
  what the block device mapping asked, and every further mapping of a snapshot this module
  knows attached as an NVMe disk whose serial is the volume ID, as on Nitro.
- DescribeInstanceInformation: Online only while the VM's guest agent answers.
- SendCommand (AWS-RunShellScript): the commands, joined by newlines, are written to
  `_script.sh` under the agent's orchestration directory and run with `sh -c <script>` as root,
  in the agent's working directory, with the agent's variables, as the SSM agent does;
  GetCommandInvocation answers InProgress until it ends, then Success or Failed with its exit
  code, or TimedOut after executionTimeout, with the first 24,000 characters of stdout and 8,000
  of stderr.
- What the agent leaves on the instance, as aws/amazon-ssm-agent (3.3) does (see AgentTraces):
  its log and audit file, each command's script and output in its orchestration directory, its
  state and idempotency entries. Some of it is written after the command has exited, so no
  command can remove it itself.
- StopInstances: an ACPI-like shutdown of the guest; the instance reads `stopping` until the VM
  has exited. A VM that powers itself off (the dead-man's timer) is terminated, as
  InstanceInitiatedShutdownBehavior=terminate does.
- CreateImage: the stopped instance's root disk becomes the new image's disk (its kernel and
  initrd are what the disk's /vmlinuz and /initrd.img were when it stopped: the emulator's
  boot loader); DeregisterImage forgets it.
- CreateVolume of a snapshot this module knows, then AttachVolume to a running instance: the
  volume is hot-plugged into the VM (QMP) as an NVMe disk whose serial is the volume ID;
  DetachVolume unplugs it.
- TerminateInstances: the VM is killed and its disks removed.

The VM is the instance: this module never looks at what the commands say.
"""
import base64
import json
import os
import re
import shutil
import socket
import subprocess
import threading
import time
import uuid

STDOUT_LIMIT = 24000
STDERR_LIMIT = 8000
# Hardware identity, delivered as platform vendor-data (never in the image): udev names an NVMe
# disk whose serial is a volume ID the way a Nitro instance shows an EBS volume.
VENDOR_DATA = """#cloud-config
bootcmd:
  - [sh, -c, "mkdir -p /run/udev/rules.d && echo 'KERNEL==\\"nvme*n*\\", ENV{DEVTYPE}==\\"disk\\", ENV{ID_SERIAL_SHORT}==\\"vol*\\", SYMLINK+=\\"disk/by-id/nvme-Amazon_Elastic_Block_Store_$env{ID_SERIAL_SHORT}\\"' > /run/udev/rules.d/70-ebs-nvme.rules && udevadm control --reload && udevadm trigger --subsystem-match=block --action=add"]
"""
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class AgentGone(Exception):
    pass


class Agent:
    """The QEMU guest agent of one VM, over its Unix socket (one request at a time)."""

    def __init__(self, path):
        self.path = path
        self.sock = None
        self.buf = b""
        self.lock = threading.Lock()
        self.sync_id = int(time.time()) % 100000

    def close(self):
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
        self.sock = None
        self.buf = b""

    def _line(self, deadline):
        while b"\n" not in self.buf:
            left = deadline - time.time()
            if left <= 0:
                raise socket.timeout()
            self.sock.settimeout(left)
            chunk = self.sock.recv(65536)
            if not chunk:
                raise AgentGone("the guest agent closed its socket")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line.strip().lstrip(b"\xff")

    def _connect(self, timeout):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout)
        s.connect(self.path)
        self.sock = s
        self.buf = b""
        self.sync_id += 1
        want = self.sync_id
        s.sendall(b"\xff" + json.dumps({"execute": "guest-sync-delimited", "arguments": {"id": want}}).encode() + b"\n")
        deadline = time.time() + timeout
        while True:
            line = self._line(deadline)
            if not line:
                continue
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            if msg.get("return") == want:
                return

    def call(self, command, arguments=None, timeout=30):
        with self.lock:
            try:
                if self.sock is None:
                    self._connect(timeout)
                req = {"execute": command}
                if arguments is not None:
                    req["arguments"] = arguments
                self.sock.sendall(json.dumps(req).encode() + b"\n")
                if command == "guest-shutdown":
                    return None
                deadline = time.time() + timeout
                while True:
                    line = self._line(deadline)
                    if not line:
                        continue
                    msg = json.loads(line)
                    if "error" in msg:
                        raise RuntimeError("%s: %s" % (command, msg["error"].get("desc")))
                    if "return" in msg:
                        return msg["return"]
            except (OSError, socket.timeout, AgentGone, ValueError):
                self.close()
                raise

    def ping(self, timeout=2):
        try:
            self.call("guest-ping", timeout=timeout)
            return True
        except Exception:
            return False

    def write_file(self, path, data, mode=None):
        h = self.call("guest-file-open", {"path": path, "mode": "w"})
        try:
            for i in range(0, len(data), 1 << 20):
                self.call("guest-file-write", {"handle": h, "buf-b64": base64.b64encode(data[i:i + (1 << 20)]).decode()})
        finally:
            self.call("guest-file-close", {"handle": h})

    def read_file(self, path):
        h = self.call("guest-file-open", {"path": path, "mode": "r"})
        out = b""
        try:
            while True:
                r = self.call("guest-file-read", {"handle": h, "count": 4 << 20}, timeout=120)
                out += base64.b64decode(r.get("buf-b64", ""))
                if r.get("eof") or not r.get("count"):
                    return out
        finally:
            self.call("guest-file-close", {"handle": h})

    def start(self, argv, env=None, stdin=None):
        args = {"path": argv[0], "arg": argv[1:], "capture-output": True}
        if env is not None:
            args["env"] = env
        if stdin is not None:
            args["input-data"] = base64.b64encode(stdin).decode()
        return self.call("guest-exec", args)["pid"]

    def status(self, pid):
        return self.call("guest-exec-status", {"pid": pid})

    def wait(self, pid, timeout):
        """The guest-exec-status of `pid` once it has exited, or None after `timeout` seconds."""
        deadline = time.time() + timeout
        # Most commands end within tens of milliseconds, even under TCG: ask again soon, then
        # less and less often (every 0.2 s at most).
        pause = 0.01
        while True:
            st = self.status(pid)
            if st.get("exited"):
                return st
            if time.time() > deadline:
                return None
            time.sleep(pause)
            pause = min(pause * 2, 0.2)

    def run(self, argv, timeout=120, stdin=None):
        pid = self.start(argv, env=["PATH=" + PATH], stdin=stdin)
        st = self.wait(pid, timeout)
        if st is None:
            raise RuntimeError("%s did not finish in %ds" % (argv, timeout))
        return st.get("exitcode", -1), base64.b64decode(st.get("out-data", "")), base64.b64decode(st.get("err-data", ""))


class AgentTraces:
    """What amazon-ssm-agent writes on its instance while it works, from aws/amazon-ssm-agent
    (3.3.1142.0). Paths and formats:
    - agent/log/logger/log_unix.go, seelog_unix.xml: /var/log/amazon/ssm/amazon-ssm-agent.log,
      lines `%Date(2006-01-02 15:04:05.0000) %LEVEL %Msg`;
    - agent/fileutil/.../eventlog.go: the audit file /var/log/amazon/ssm/audits/
      amazon-ssm-agent-audit-YYYY-MM-DD, `SchemaVersion=1`, then `agent_telemetry ...` at start
      (the log lines the agent writes at start are not copied: their text was not read);
    - agent/plugins/runscript/runscript.go, iohandler/iohandler.go: `_script.sh` (0700) and
      `stdout`, `stderr`, `stdoutConsole`, `stderrConsole` (0600) under
      <id>/document/orchestration/<command>/, kept after the run
      (Ssm.OrchestrationDirectoryCleanup defaults to "default": keep). Where, as the agent
      builds the paths (framework/docparser/docparser.go, fileutil.BuildPath dropping every
      `:`; runscript.go adds the input's `id`; iohandler.go Init(pluginName, stepName)): for
      AWS-RunShellScript (schema 1.2, id `0.aws:runShellScript`) both the script and the
      outputs in awsrunShellScript/0.awsrunShellScript/; for a schema 2.2 document's step
      (no id) the script in <step name>/, the outputs in awsrunShellScript/<step name>/;
    - framework/docmanager/docmanager.go: the state file document/state/current/<command>,
      removed when the command is over; messagehandler/idempotency: idempotency/SendCommand/
      <command>/, removed 30 minutes later;
    - runshellscript.go logs `aws:runShellScript started with configuration ...` with the
      commands themselves at INFO; core/agent.go logs `got signal`, `Stopping Core Agent`,
      `Bye.` at SIGTERM.
    The deb/rpm unit runs the agent as root in WorkingDirectory=/usr/bin/ (packaging/linux)."""

    VERSION = "3.3.1142.0"
    LOG = "/var/log/amazon/ssm/amazon-ssm-agent.log"
    WORKDIR = "/usr/bin/"

    def __init__(self, vm):
        self.vm = vm

    @staticmethod
    def stamp():
        t = time.time()
        return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t)) + ".%04d" % int((t % 1) * 10000)

    # Each of the agent's writes below is made by one shell in the guest rather than one
    # guest-agent exec per file (a process started under TCG costs a tenth of a second or more):
    # the same files, modes and lines, in the order the agent makes them.
    APPEND = '[ -e "$1" ] && printf "%s" "$2" >> "$1"; true'

    def _sh(self, script, *args, stdin=None):
        return self.vm.agent.run(["/bin/sh", "-c", script, "sh"] + list(args), stdin=stdin)

    def _lines(self, lines):
        return "".join("%s %s\n" % (self.stamp(), l) for l in lines)

    def log(self, *lines):
        """Appends as the agent's logger does: through the file it opened when the agent started
        (seelog keeps it open), so lines written after someone removed the file go nowhere
        anyone sees, until the agent starts again."""
        self._sh(self.APPEND, self.LOG, self._lines(lines))

    def _state(self, command_id, status):
        return json.dumps({"DocumentInformation": {"DocumentID": command_id, "CommandID": command_id,
                                                   "InstanceID": self.vm.instance, "DocumentStatus": status}})

    def started(self):
        audit = "/var/log/amazon/ssm/audits/amazon-ssm-agent-audit-" + time.strftime("%Y-%m-%d")
        base = "/var/lib/amazon/ssm/%s/document/state" % self.vm.instance
        # The log is opened at start (its start lines are not copied: see above).
        self._sh('mkdir -p /var/log/amazon/ssm/audits "$1/current" "$1/pending" && printf "%s" "$3" >> "$2" && : >> "$4"',
                 base, audit, "SchemaVersion=1\nagent_telemetry amazon-ssm-agent.start %s %s\n"
                 % (self.VERSION, time.strftime("%H:%M:%S")), self.LOG)

    OUTPUTS = ("stdout", "stderr", "stdoutConsole", "stderrConsole")

    def command_started(self, command_id, orch, script, script_dir=None):
        """The command taken: its idempotency entry, its state file (InProgress), its output
        files opened before it starts (iohandler.go), its script (0700) and the log lines.
        (exit code, stdout, stderr) of the one shell that writes them; it raises if the guest's
        agent is gone."""
        base = "/var/lib/amazon/ssm/%s" % self.vm.instance
        lines = self._lines([
            "INFO [ssm-agent-worker] [MessageService] writing command in the idempotency directory for command %s" % command_id,
            "INFO [ssm-document-worker] [%s] document: %s worker started" % (command_id, command_id),
            "INFO [ssm-document-worker] [%s] [pluginName=aws:runShellScript] aws:runShellScript started with configuration {Settings:<nil> Properties:map[id:0.aws:runShellScript runCommand:%s] OutputS3KeyPrefix: OrchestrationDirectory:%s}"
            % (command_id, json.dumps(script.splitlines()), orch)])
        return self._sh(
            'set -e; mkdir -p "$1/idempotency/SendCommand/$2" "$1/document/state/current" "$3"\n'
            'printf "%s" "$4" > "$1/document/state/current/$2"\n'
            'for f in ' + " ".join(self.OUTPUTS) + '; do : > "$3/$f"; chmod 0600 "$3/$f"; done\n'
            'mkdir -p "$7"; cat > "$7/_script.sh"; chmod 0700 "$7/_script.sh"\n'
            + self.APPEND.replace("$1", "$5").replace("$2", "$6"),
            base, command_id, orch, self._state(command_id, "InProgress"), self.LOG, lines,
            script_dir or orch, stdin=script.encode())

    def command_done(self, command_id, orch, code, out, err):
        agent = self.vm.agent
        # Written through the handles opened at the start: a command that removed the files
        # wrote into files nobody sees any more.
        _, present, _ = self._sh('for f in "$@"; do [ -e "$f" ] && echo "$f"; done; true',
                                 *[orch + "/" + name for name in self.OUTPUTS])
        present = set(present.decode().split("\n"))
        for name, data in zip(self.OUTPUTS, (out, err, out, err)):
            if orch + "/" + name in present:
                agent.write_file(orch + "/" + name, data)
        # The state is saved again with the results, then removed from current/ (docmanager).
        lines = []
        if code != 0:
            lines.append("INFO [ssm-document-worker] [%s] The execution of command returned Exit Status: %d" % (command_id, code))
        lines += ["INFO [ssm-document-worker] [%s] Sending plugin aws:runShellScript completion message" % command_id,
                  "INFO [ssm-agent-worker] [%s] execution of %s is over. Removing interimState from current folder" % (command_id, command_id)]
        state = "/var/lib/amazon/ssm/%s/document/state/current" % self.vm.instance
        self._sh('mkdir -p "$1" && printf "%s" "$2" > "$1/$3" && rm -f "$1/$3"; '
                 + self.APPEND.replace("$1", "$4").replace("$2", "$5"),
                 state, self._state(command_id, "Success" if code == 0 else "Failed"), command_id,
                 self.LOG, self._lines(lines))

    def stopping(self):
        self.log("INFO [amazon-ssm-agent] amazon-ssm-agent got signal:terminated",
                 "INFO [amazon-ssm-agent] Stopping Core Agent",
                 "INFO [amazon-ssm-agent] Bye.")


class Qmp:
    """QEMU's monitor of one VM (QMP, over its Unix socket): hot-plugs a disk as EC2 attaches a
    volume to a running instance."""

    def __init__(self, path):
        self.path = path
        self.lock = threading.Lock()

    def call(self, command, arguments=None, timeout=30):
        with self.lock:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(timeout)
            s.connect(self.path)
            f = s.makefile("rwb")
            try:
                def answer():
                    while True:
                        line = f.readline()
                        if not line:
                            raise RuntimeError("QMP closed the connection")
                        msg = json.loads(line)
                        if "error" in msg:
                            raise RuntimeError("%s: %s" % (command, msg["error"].get("desc")))
                        if "return" in msg:
                            return msg["return"]
                f.readline()            # the greeting
                f.write(b'{"execute": "qmp_capabilities"}\n')
                f.flush()
                answer()
                req = {"execute": command}
                if arguments is not None:
                    req["arguments"] = arguments
                f.write(json.dumps(req).encode() + b"\n")
                f.flush()
                return answer()
            finally:
                f.close()
                s.close()


def overlay(backing, fmt, path):
    """A qcow2 copy-on-write disk over `backing`: what EC2 makes of a snapshot, lazily."""
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", fmt, "-b", backing, path], check=True)


class Vm:
    def __init__(self, instance, image, dirpath, region="us-east-1"):
        self.instance = instance
        self.region = region
        self.os_release = None
        self.image = image
        self.dir = dirpath
        self.disk = os.path.join(dirpath, "root.qcow2")
        self.kernel = image["kernel"]
        self.initrd = image["initrd"]
        self.proc = None
        self.agent = Agent(os.path.join(dirpath, "qga.sock"))
        self.traces = AgentTraces(self)
        self.qmp = Qmp(os.path.join(dirpath, "qmp.sock"))
        self.attached = {}              # volume ID -> QEMU device ID, for volumes attached while running
        self.agent_started = False      # the SSM agent's start is recorded once per boot
        self.expected_exit = False      # stopping or terminating: the VM's exit is asked for
        self.stopping = False
        self.stopped = threading.Event()

    def boot(self, user_data, volume_gib, extra, machine):
        os.makedirs(self.dir, exist_ok=True)
        overlay(self.image["disk"], self.image.get("format", "qcow2"), self.disk)
        if volume_gib:
            virtual = json.loads(subprocess.run(["qemu-img", "info", "--output=json", "-U", self.disk],
                                                check=True, capture_output=True).stdout)["virtual-size"]
            if volume_gib * (1 << 30) > virtual:
                subprocess.run(["qemu-img", "resize", "-q", self.disk, "%dG" % volume_gib], check=True)
        volumes = []                    # (disk, serial)
        for i, (disk, fmt, serial) in enumerate(extra):
            path = os.path.join(self.dir, "volume-%d.qcow2" % i)
            overlay(disk, fmt, path)
            volumes.append((path, serial))
        seed = self.seed(user_data)
        arch = self.image.get("arch", "x86_64")
        binary, mach, cpu, console = {
            "x86_64": ("qemu-system-x86_64", "q35,accel=tcg", "qemu64", "ttyS0"),
            "arm64": ("qemu-system-aarch64", "virt,accel=tcg", "max", "ttyAMA0"),
        }[arch]
        argv = [binary, "-machine", mach, "-cpu", cpu, "-m", str(machine.get("memory_mib", 1536)),
                "-smp", str(machine.get("cpus", 2)), "-uuid", str(uuid.uuid4()),
                "-nographic", "-no-reboot", "-nodefaults", "-display", "none", "-monitor", "none",
                "-kernel", self.kernel, "-initrd", self.initrd,
                "-append", "root=%s rw console=%s panic=-1 quiet" % (self.image.get("root", "/dev/vda"), console),
                "-drive", "file=%s,if=none,id=root,format=qcow2,cache=unsafe" % self.disk,
                "-device", "virtio-blk-pci,drive=root,serial=%s" % self.instance[:20],
                "-drive", "file=%s,if=none,id=seed,format=raw,readonly=on" % seed,
                "-device", "virtio-blk-pci,drive=seed,serial=cidata"]
        for i, (path, serial) in enumerate(volumes):
            argv += ["-drive", "file=%s,if=none,id=vol%d,format=qcow2,cache=unsafe" % (path, i),
                     "-device", "nvme,drive=vol%d,serial=%s" % (i, serial[:20])]
        # A free PCIe slot for volumes attached while the instance runs (see hotplug).
        argv += ["-device", "pcie-root-port,id=hotplug0,chassis=1",
                 "-qmp", "unix:%s,server=on,wait=off" % os.path.join(self.dir, "qmp.sock")]
        argv += ["-device", "virtio-serial",
                 "-chardev", "socket,path=%s,server=on,wait=off,id=qga0" % self.agent.path,
                 "-device", "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0",
                 "-nic", "none", "-serial", "file:%s" % os.path.join(self.dir, "serial.log")]
        self.proc = LAUNCHER.popen(argv, os.path.join(self.dir, "qemu.err"))
        deadline = time.time() + 10
        while not os.path.exists(self.agent.path) and self.proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)

    def platform(self, version=False):
        """NAME or VERSION_ID of the guest's os-release, as the agent reports its platform."""
        if self.os_release is None:
            text = self.agent.read_file("/etc/os-release").decode(errors="replace")
            self.os_release = dict(re.findall(r'^(\w+)="?([^"\n]*)"?$', text, flags=re.M))
        return self.os_release.get("VERSION_ID" if version else "NAME", "")

    def seed(self, user_data):
        files = os.path.join(self.dir, "seed")
        os.makedirs(files, exist_ok=True)
        with open(os.path.join(files, "meta-data"), "w") as f:
            f.write("instance-id: %s\nlocal-hostname: ip-10-0-0-%d\n" % (self.instance, int(self.instance[-2:], 16)))
        with open(os.path.join(files, "user-data"), "wb") as f:
            f.write(user_data)
        with open(os.path.join(files, "vendor-data"), "w") as f:
            f.write(VENDOR_DATA)
        with open(os.path.join(files, "network-config"), "w") as f:
            f.write("version: 1\nconfig: disabled\n")
        img = os.path.join(self.dir, "seed.img")
        subprocess.run(["mkfs.vfat", "-C", "-n", "CIDATA", img, "1024"], check=True, capture_output=True)
        subprocess.run(["mcopy", "-i", img, "-o"] + [os.path.join(files, n) for n in
                       ("meta-data", "user-data", "vendor-data", "network-config")] + ["::"], check=True)
        return img

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def hotplug(self, volume, source):
        """A volume attached to the running instance: an NVMe disk whose serial is the volume
        ID, as a Nitro instance shows an EBS volume, plugged into the free PCIe slot."""
        path = os.path.join(self.dir, "%s.qcow2" % volume)
        overlay(source["disk"], source.get("format", "qcow2"), path)
        serial = volume.replace("-", "")[:20]
        node = "node-" + serial
        self.qmp.call("blockdev-add", {"driver": "qcow2", "node-name": node,
                                       "file": {"driver": "file", "filename": path}})
        self.qmp.call("device_add", {"driver": "nvme", "id": "dev-" + serial, "drive": node,
                                     "serial": serial, "bus": "hotplug0"})
        self.attached[volume] = "dev-" + serial

    def unplug(self, volume):
        dev = self.attached.pop(volume, None)
        if dev is not None and self.running():
            self.qmp.call("device_del", {"id": dev})

    def kill(self):
        self.expected_exit = True
        if self.running():
            self.proc.kill()
            self.proc.wait(timeout=30)
        self.agent.close()


def dies_with_parent():
    import ctypes
    ctypes.CDLL("libc.so.6").prctl(1, 9)    # PR_SET_PDEATHSIG, SIGKILL


class Launcher:
    """Starts QEMU from one thread that lives as long as the proxy: PDEATHSIG fires when the
    *thread* that forked a child ends, and the server's request threads end with each request."""

    def __init__(self):
        import queue
        self.queue = queue.Queue()
        threading.Thread(target=self.loop, daemon=True).start()

    def loop(self):
        while True:
            argv, err, box, done = self.queue.get()
            try:
                box.append(subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                            stderr=open(err, "w"), preexec_fn=dies_with_parent))
            except Exception as e:
                box.append(e)
            done.set()

    def popen(self, argv, err):
        box, done = [], threading.Event()
        self.queue.put((argv, err, box, done))
        done.wait()
        if isinstance(box[0], Exception):
            raise box[0]
        return box[0]


LAUNCHER = Launcher()


class Machines:
    """The VMs behind instances, the disks behind images and snapshots."""

    def __init__(self, moto_ec2):
        self.moto_ec2 = moto_ec2        # (region, [(k, v)]) -> XML bytes, straight to moto
        self.lock = threading.Lock()
        self.vms = {}                   # instance ID -> Vm
        self.images = {}                # image ID -> {"disk", "format", "kernel", "initrd", "arch"}
        self.snapshots = {}             # snapshot ID -> image ID
        self.volumes = {}               # volume ID -> the image spec its snapshot is of
        self.commands = {}              # (command ID, instance ID) -> invocation dict
        self.dir = None

    # -- configuration --------------------------------------------------------------------
    def configure(self, cfg):
        m = cfg.get("machines")
        if not m:
            return None
        with self.lock:
            self.dir = m["dir"]
            for image, spec in (m.get("images") or {}).items():
                if image not in self.images:
                    self.images[image] = dict(spec)
        return m

    def image_of_snapshot(self, region, snapshot):
        with self.lock:
            if snapshot in self.snapshots:
                return self.images.get(self.snapshots[snapshot])
            known = list(self.images)
        for image in known:
            xml = self.moto_ec2(region, [("Action", "DescribeImages"), ("ImageId.1", image)]).decode()
            for s in re.findall(r"<snapshotId>([^<]+)</snapshotId>", xml):
                with self.lock:
                    self.snapshots[s] = image
        with self.lock:
            return self.images.get(self.snapshots.get(snapshot))

    def owns(self, instance):
        with self.lock:
            return instance in self.vms

    def vm(self, instance):
        with self.lock:
            return self.vms[instance]

    # -- EC2 ------------------------------------------------------------------------------
    def run_instances(self, region, form, answer, machine):
        image_id = form.get("ImageId", [""])[0]
        with self.lock:
            image = self.images.get(image_id)
        if image is None:
            return
        instances = re.findall(r"<instanceId>([^<]+)</instanceId>", answer.decode())
        user_data = base64.b64decode(form.get("UserData", [""])[0] or "")
        for instance in instances:
            with self.lock:
                if instance in self.vms:
                    continue    # a retried RunInstances (same client token) answers the same
            xml = self.moto_ec2(region, [("Action", "DescribeInstances"), ("InstanceId.1", instance)]).decode()
            root = re.search(r"<rootDeviceName>([^<]+)</rootDeviceName>", xml)
            root = root.group(1) if root else "/dev/sda1"
            volumes = dict(re.findall(r"<deviceName>([^<]+)</deviceName>\s*<ebs>.*?<volumeId>([^<]+)</volumeId>", xml, flags=re.S))
            size, extra = None, []
            i = 1
            while "BlockDeviceMapping.%d.DeviceName" % i in form:
                dev = form["BlockDeviceMapping.%d.DeviceName" % i][0]
                snap = form.get("BlockDeviceMapping.%d.Ebs.SnapshotId" % i, [None])[0]
                gib = form.get("BlockDeviceMapping.%d.Ebs.VolumeSize" % i, [None])[0]
                if dev == root:
                    size = int(gib) if gib else None
                elif snap:
                    source = self.image_of_snapshot(region, snap)
                    if source is not None:
                        serial = volumes.get(dev, "vol-unknown").replace("-", "")
                        extra.append((source["disk"], source.get("format", "qcow2"), serial))
                i += 1
            vm = Vm(instance, image, os.path.join(self.dir, instance), region)
            with self.lock:
                self.vms[instance] = vm
            vm.boot(user_data, size, extra, machine)
            threading.Thread(target=self.watch, args=(region, vm), daemon=True).start()

    def watch(self, region, vm):
        """A VM that exits on its own was shut down from inside: it terminates (the launch asked
        InstanceInitiatedShutdownBehavior=terminate of every instance bake starts)."""
        vm.proc.wait()
        vm.stopped.set()
        if not vm.expected_exit:
            try:
                self.moto_ec2(region, [("Action", "TerminateInstances"), ("InstanceId.1", vm.instance)])
            except Exception:
                pass
            self.forget(vm.instance)

    def stop_instances(self, form):
        for instance in ids(form, "InstanceId"):
            with self.lock:
                vm = self.vms.get(instance)
            if vm is None or not vm.running():
                continue
            vm.expected_exit = True
            vm.stopping = True
            threading.Thread(target=self.shut_down, args=(vm,), daemon=True).start()

    def shut_down(self, vm):
        try:
            # What the disk would boot next time: its own kernel and initrd.
            kernel = vm.agent.read_file("/vmlinuz")
            initrd = vm.agent.read_file("/initrd.img")
            for name, data in (("vmlinuz", kernel), ("initrd.img", initrd)):
                with open(os.path.join(vm.dir, name), "wb") as f:
                    f.write(data)
            vm.kernel = os.path.join(vm.dir, "vmlinuz")
            vm.initrd = os.path.join(vm.dir, "initrd.img")
            # systemd stops the SSM agent first at power-off: its last log lines.
            vm.traces.stopping()
            vm.agent.call("guest-shutdown", {"mode": "powerdown"})
        except Exception:
            pass
        try:
            vm.proc.wait(timeout=180)
        except subprocess.TimeoutExpired:
            vm.proc.kill()
            vm.proc.wait()
        vm.agent.close()
        vm.stopping = False

    def stopping(self, instance):
        with self.lock:
            vm = self.vms.get(instance)
        return vm is not None and vm.stopping

    def create_image(self, region, form, answer):
        instance = form.get("InstanceId", [""])[0]
        m = re.search(rb"<imageId>([^<]+)</imageId>", answer)
        with self.lock:
            vm = self.vms.get(instance)
        if vm is None or m is None:
            return
        image = m.group(1).decode()
        # EC2 snapshots a volume as it is at that moment; an instance still shutting down is
        # waited for (bake stops first).
        vm.stopped.wait(timeout=180)
        disk = os.path.join(self.dir, image + ".qcow2")
        subprocess.run(["qemu-img", "convert", "-U", "-O", "qcow2", vm.disk, disk], check=True)
        kernel, initrd = disk + ".vmlinuz", disk + ".initrd.img"
        shutil.copyfile(vm.kernel, kernel)
        shutil.copyfile(vm.initrd, initrd)
        with self.lock:
            self.images[image] = {"disk": disk, "format": "qcow2", "kernel": kernel, "initrd": initrd,
                                  "arch": vm.image.get("arch", "x86_64"), "created": True}
            if "root" in vm.image:
                # The image boots as its source did: its kernel command line comes with it.
                self.images[image]["root"] = vm.image["root"]

    def deregister_image(self, form):
        image = form.get("ImageId", [""])[0]
        with self.lock:
            spec = self.images.get(image)
            if spec is None or not spec.get("created"):
                return
            del self.images[image]
            for s in [s for s, i in self.snapshots.items() if i == image]:
                del self.snapshots[s]
        # A canary booted from it keeps its own overlay's backing file open; unlinking is safe.
        for path in (spec["disk"], spec["kernel"], spec["initrd"]):
            try:
                os.remove(path)
            except OSError:
                pass

    def create_volume(self, region, form, answer):
        snapshot = form.get("SnapshotId", [None])[0]
        m = re.search(rb"<volumeId>([^<]+)</volumeId>", answer)
        if not snapshot or m is None:
            return
        source = self.image_of_snapshot(region, snapshot)
        if source is not None:
            with self.lock:
                self.volumes[m.group(1).decode()] = source

    def attach_volume(self, form):
        volume = form.get("VolumeId", [""])[0]
        instance = form.get("InstanceId", [""])[0]
        with self.lock:
            vm = self.vms.get(instance)
            source = self.volumes.get(volume)
        if vm is not None and source is not None and vm.running():
            vm.hotplug(volume, source)

    def detach_volume(self, form):
        volume = form.get("VolumeId", [""])[0]
        with self.lock:
            vms = list(self.vms.values())
        for vm in vms:
            if volume in vm.attached:
                vm.unplug(volume)

    def delete_volume(self, form):
        with self.lock:
            self.volumes.pop(form.get("VolumeId", [""])[0], None)

    def terminate_instances(self, form):
        for instance in ids(form, "InstanceId"):
            self.forget(instance)

    def forget(self, instance):
        with self.lock:
            vm = self.vms.pop(instance, None)
        if vm is None:
            return
        vm.kill()
        shutil.rmtree(vm.dir, ignore_errors=True)

    # -- SSM ------------------------------------------------------------------------------
    def online(self, instance):
        with self.lock:
            vm = self.vms.get(instance)
        if vm is None or not vm.running() or vm.stopping or not vm.agent.ping():
            return False
        if not vm.agent_started:
            try:
                vm.traces.started()
                vm.agent_started = True
            except Exception:
                return False
        return True

    def send_command(self, req, command_id):
        """Starts AWS-RunShellScript on every VM-backed target (the proxy has already refused a
        command to one whose agent is not online, as SSM does)."""
        params = req.get("Parameters") or {}
        script = "\n".join(params.get("commands") or [])
        timeout = int((params.get("executionTimeout") or ["3600"])[0])
        workdir = (params.get("workingDirectory") or [""])[0]
        for instance in req.get("InstanceIds") or []:
            with self.lock:
                vm = self.vms.get(instance)
            if vm is None:
                continue
            inv = {"Status": "InProgress", "ResponseCode": -1, "out": b"", "err": b""}
            with self.lock:
                self.commands[(command_id, instance)] = inv
            threading.Thread(target=self.execute, args=(vm, command_id, script, timeout, workdir, inv,
                                                        req.get("_step")),
                             daemon=True).start()

    def execute(self, vm, command_id, script, timeout, workdir, inv, step=None):
        root = "/var/lib/amazon/ssm/%s/document/orchestration/%s" % (vm.instance, command_id)
        if step is None:
            orch = script_dir = root + "/awsrunShellScript/0.awsrunShellScript"
        else:
            step = step.replace(":", "")
            orch, script_dir = root + "/awsrunShellScript/" + step, root + "/" + step
        path = script_dir + "/_script.sh"
        try:
            rc, _, err = vm.traces.command_started(command_id, orch, script, script_dir)
        except Exception:
            # The agent did not take the command (it stopped between the online check and the
            # delivery): SSM keeps it pending, unanswered, until its delivery times out; no
            # agent ever reports a result for it.
            return
        try:
            if rc != 0:
                raise RuntimeError(err.decode(errors="replace"))
            # An absolute workingDirectory, else the agent's own (runshellscript.go).
            cwd = workdir if workdir.startswith("/") else AgentTraces.WORKDIR
            env = ["PATH=" + PATH, "SSM_COMMAND_ID=" + command_id, "AWS_SSM_INSTANCE_ID=" + vm.instance,
                   "AWS_SSM_REGION_NAME=" + vm.region, "AWS_SSM_PLATFORM_NAME=" + vm.platform(),
                   "AWS_SSM_PLATFORM_VERSION=" + vm.platform(version=True)]
            pid = vm.agent.start(["/bin/sh", "-c", 'cd "$1" && exec sh -c "$2"', "sh", cwd, path], env=env)
            st = vm.agent.wait(pid, timeout)
            if st is None:
                # The agent kills the process tree of a command past executionTimeout.
                vm.agent.run(["/bin/sh", "-c", "pkill -KILL -P %d; kill -KILL %d" % (pid, pid)])
                inv["Status"] = "TimedOut"
                return
            inv["out"] = base64.b64decode(st.get("out-data", ""))
            inv["err"] = base64.b64decode(st.get("err-data", ""))
            code = st.get("exitcode")
            if code is None:
                code = 128 + st.get("signal", 0)
            vm.traces.command_done(command_id, orch, code, inv["out"], inv["err"])
            inv["ResponseCode"] = code
            inv["Status"] = "Success" if code == 0 else "Failed"
        except Exception as e:
            # The agent lost its instance (stopped, terminated, crashed) mid-command.
            inv["Status"] = "Failed"
            inv["err"] += ("failed to run commands: %s" % e).encode()
            inv["ResponseCode"] = -1

    def invocation(self, command_id, instance):
        with self.lock:
            inv = self.commands.get((command_id, instance))
        if inv is None:
            return None
        status = inv["Status"]
        details = {"InProgress": "InProgress", "TimedOut": "ExecutionTimedOut"}.get(status, status)
        return {"CommandId": command_id, "InstanceId": instance, "DocumentName": "AWS-RunShellScript",
                "PluginName": "aws:runShellScript", "Status": status, "StatusDetails": details,
                "ResponseCode": inv["ResponseCode"],
                "StandardOutputContent": inv["out"].decode("utf-8", errors="replace")[:STDOUT_LIMIT],
                "StandardErrorContent": inv["err"].decode("utf-8", errors="replace")[:STDERR_LIMIT]}


def ids(form, name):
    return [vs[0] for k, vs in form.items() if re.fullmatch(r"%s(\.\d+)?" % name, k)]
