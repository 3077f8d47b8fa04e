#!/bin/sh
# Runs on a canary that is joining a cluster with the canary taint. Joining takes a while
# (bootstrap or nodeadm, kubelet, the CNI), so it waits for the node to be Ready for up to
# BAKE_JOIN_TIMEOUT seconds. A node that never gets there is no verdict on the image: exit 75
# (could not judge), so the run fails and is tried again instead of rejecting the image.
set -u
limit=${BAKE_JOIN_TIMEOUT:-600}
command -v kubectl >/dev/null 2>&1 || { echo "kubectl is not installed on this node"; exit 77; }
node=$(hostname -f 2>/dev/null || hostname)
start=$(date +%s)
last="the node has not started joining"
while :; do
  if [ ! -f /var/lib/kubelet/kubeconfig ]; then
    last="no kubelet kubeconfig yet: the node has not joined"
  elif ! curl -sf --max-time 5 http://127.0.0.1:10248/healthz >/dev/null 2>&1; then
    last="kubelet healthz does not answer"
  else
    ready=$(kubectl --kubeconfig /var/lib/kubelet/kubeconfig get node "$node" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>&1)
    if [ "$ready" = True ]; then
      taints=$(kubectl --kubeconfig /var/lib/kubelet/kubeconfig get node "$node" -o jsonpath='{.spec.taints[*].key}' 2>&1)
      case " $taints " in
        *" bake.io/canary "*) echo "node $node is Ready with the canary taint after $(( $(date +%s) - start ))s"; exit 0 ;;
        *) echo "node $node is Ready but without the bake.io/canary taint (taints: $taints): workloads could land on it"; exit 1 ;;
      esac
    fi
    last="node $node is not Ready: $ready"
  fi
  if [ $(( $(date +%s) - start )) -ge "$limit" ]; then
    echo "the canary did not become a Ready node within ${limit}s: $last"
    exit 75
  fi
  echo "waiting: $last" >&2
  sleep 5
done
