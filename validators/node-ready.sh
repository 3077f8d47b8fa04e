#!/bin/sh
# Runs on a canary that is joining a cluster with the canary taint. Joining takes a while
# (bootstrap or nodeadm, kubelet, the CNI), so it waits for the node to be Ready for up to
# BAKE_JOIN_TIMEOUT seconds. A node that never gets there is no verdict on the image: exit 75
# (could not judge), so the run fails and is tried again instead of rejecting the image.
set -u
limit=${BAKE_JOIN_TIMEOUT:-600}
# The node's name is the instance's private DNS name, as nodeadm (AL2023) and Canonical's
# bootstrap register it (bake passes it from DescribeInstances); not `hostname -f`, which a
# custom DHCP domain changes.
node=${BAKE_NODE_NAME:-$(hostname -f 2>/dev/null || hostname)}
# On Ubuntu EKS, kubectl is a snap alias that bootstrap makes while the node joins (snap alias
# kubectl-eks.kubectl kubectl); AL2023 installs kubelet only and never has one.
PATH=$PATH:/snap/bin
start=$(date +%s)
joined=""
last="the node has not started joining"
while :; do
  if [ ! -f /var/lib/kubelet/kubeconfig ]; then
    last="no kubelet kubeconfig yet: the node has not joined"
  elif ! curl -sf --max-time 5 http://127.0.0.1:10248/healthz >/dev/null 2>&1; then
    last="kubelet healthz does not answer"
  elif ! command -v kubectl >/dev/null 2>&1; then
    [ -n "$joined" ] || joined=$(date +%s)
    if [ $(( $(date +%s) - joined )) -ge 60 ]; then
      echo "the kubelet of node $node runs, but the node has no kubectl to ask the cluster whether it is Ready (a base that installs kubelet only, as AL2023 does)"
      exit 77
    fi
    last="no kubectl on the node yet"
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
