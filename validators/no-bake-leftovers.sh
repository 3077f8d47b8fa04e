#!/bin/sh
# Nothing from the bake ships: no staging dir, no apt lists or downloaded packages, no logs,
# journals or shell history, no record of the SSM agent's commands, no cloud-init state of the
# builder's boot (a node would take the builder's instance for its own). Judged on the image's
# root as shipped (BAKE_IMAGE_ROOT).
set -u
root=${BAKE_IMAGE_ROOT:-}
[ -n "$root" ] && [ -d "$root/etc" ] || { echo "the image's root filesystem is not mounted (BAKE_IMAGE_ROOT)"; exit 77; }
cd "$root" || exit 77
bad=""
add() { bad="$bad; $*"; }
[ -e var/tmp/bake ] && add "bake's staging dir /var/tmp/bake"
[ -e var/lib/bake-validators ] && add "validator scripts in /var/lib/bake-validators"
lists=$(find var/lib/apt/lists -maxdepth 1 -type f ! -name lock 2>/dev/null | head -n 3)
[ -n "$lists" ] && add "apt lists: $(echo $lists)"
debs=$(find var/cache/apt/archives var/cache/dnf -type f \( -name '*.deb' -o -name '*.rpm' \) 2>/dev/null | head -n 3)
[ -n "$debs" ] && add "downloaded packages: $(echo $debs)"
logs=$(find var/log -type f -size +0c 2>/dev/null | head -n 5)
[ -n "$logs" ] && add "logs from the bake: $(echo $logs)"
hist=$(ls root/.bash_history home/*/.bash_history 2>/dev/null | head -n 3)
[ -n "$hist" ] && add "shell history: $(echo $hist)"
# amazon-ssm-agent keeps every command it ran (script, stdout, stderr) and its state under a
# directory named after the instance (aws/amazon-ssm-agent: agent/plugins/runscript,
# framework/docmanager): the builder's would ship bake's scripts and their output.
ssm=$(ls -d var/lib/amazon/ssm/i-* var/lib/amazon/ssm/mi-* 2>/dev/null | head -n 3)
[ -n "$ssm" ] && add "the SSM agent's record of another instance's commands (scripts, output, state): $(echo $ssm)"
inst=$(ls -d var/lib/cloud/instances/* 2>/dev/null | head -n 3)
[ -n "$inst" ] && add "cloud-init state of the builder's boot: $(echo $inst) (run cloud-init clean)"
if [ -n "$bad" ]; then echo "the image ships leftovers of the bake:${bad#;}"; exit 1; fi
echo "nothing from the bake ships in the image"
