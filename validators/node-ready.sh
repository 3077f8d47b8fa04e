#!/bin/sh
# Runs on a canary that joined a cluster with the canary taint.
set -u
command -v kubectl >/dev/null 2>&1 || { echo "kubectl is not installed on this node"; exit 77; }
[ -f /var/lib/kubelet/kubeconfig ] || { echo "no kubelet kubeconfig: the node did not join a cluster"; exit 77; }
if ! curl -sf --max-time 5 http://127.0.0.1:10248/healthz >/dev/null; then echo "kubelet healthz does not answer"; exit 1; fi
node=$(hostname -f 2>/dev/null || hostname)
ready=$(kubectl --kubeconfig /var/lib/kubelet/kubeconfig get node "$node" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>&1)
[ "$ready" = True ] || { echo "node $node is not Ready: $ready"; exit 1; }
echo "node $node is Ready"
