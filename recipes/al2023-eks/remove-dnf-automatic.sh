#!/bin/sh
# Static nodes change only on `terraform apply`: nothing may install updates behind our back.
# AL2023 does not ship dnf-automatic by default; remove it if the base (or a step) added it.
set -eu
if rpm -q dnf-automatic >/dev/null 2>&1; then
  systemctl disable --now dnf-automatic.timer dnf-automatic-install.timer >/dev/null 2>&1 || true
  dnf remove -y -q dnf-automatic
fi
echo "dnf-automatic is not installed"
