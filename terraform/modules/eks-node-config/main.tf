locals {
  # Kubernetes label syntax: an optional DNS-subdomain prefix and a name of at most 63 characters.
  label_name  = "[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
  label_key   = "^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?${local.label_name}$"
  label_value = "^(${local.label_name})?$"
  # The NodeRestriction admission plugin refuses a kubelet that labels itself in the
  # kubernetes.io / k8s.io namespaces, except under kubelet.kubernetes.io/ and node.kubernetes.io/:
  # such a node never joins.
  label_reserved = "^([^/]*\\.)?(kubernetes\\.io|k8s\\.io)/"
  label_allowed  = "^([^/]*\\.)?(kubelet|node)\\.kubernetes\\.io/"
  # Flags are rendered into a shell word and a YAML list: no spaces or quotes, and labels and
  # taints go through `labels`/`taints`, not a second --node-labels.
  kubelet_flag = "^--[a-z0-9][a-z0-9-]*(=[^\\s'\"\\\\]*)?$"
  own_flags    = "^--(node-labels|register-with-taints)(=|$)"

  # The nodes by name (each named once: var.nodes refuses a second; the grouping only keeps a
  # duplicate from failing here before that message is shown).
  nodes = { for name, same in { for n in var.nodes : n.name => n... } : name => same[0] }

  # Every label, taint and flag a node gets, set-wide ones first.
  effective = {
    for name, node in local.nodes : name => {
      labels             = merge(var.labels, node.labels)
      taints             = concat(var.taints, node.taints)
      kubelet_extra_args = concat(var.kubelet_extra_args, node.kubelet_extra_args)
    }
  }

  problems = flatten([
    for name, e in local.effective : concat(
      [for k, v in e.labels : "node ${name}: label key \"${k}\" is not a Kubernetes label key" if !can(regex(local.label_key, k))],
      [for k, v in e.labels : "node ${name}: label ${k}=\"${v}\": values are at most 63 letters, digits, -, _ or ., starting and ending with a letter or digit" if !can(regex(local.label_value, v))],
      [for k, v in e.labels : "node ${name}: label ${k} is in a namespace the kubelet may not set on itself (kubernetes.io, k8s.io); use node.kubernetes.io/ or your own prefix" if can(regex(local.label_reserved, k)) && !can(regex(local.label_allowed, k))],
      [for t in e.taints : "node ${name}: taint key \"${t.key}\" is not a Kubernetes label key" if !can(regex(local.label_key, t.key))],
      [for t in e.taints : "node ${name}: taint ${t.key} value \"${t.value}\" is not a label value" if !can(regex(local.label_value, t.value))],
      [for t in e.taints : "node ${name}: taint ${t.key} effect \"${t.effect}\" must be NoSchedule, PreferNoSchedule or NoExecute" if !contains(["NoSchedule", "PreferNoSchedule", "NoExecute"], t.effect)],
      [for f in e.kubelet_extra_args : "node ${name}: kubelet flag \"${f}\" must look like --name or --name=value (no spaces or quotes)" if !can(regex(local.kubelet_flag, f))],
      [for f in e.kubelet_extra_args : "node ${name}: ${f}: set labels and taints with `labels` and `taints`, not kubelet flags" if can(regex(local.own_flags, f))],
      var.join == "none" && local.nodes[name].user_data == null ? ["node ${name}: join = \"none\" needs the node's own user_data"] : [],
    )
  ])

  kubelet_flags = {
    for name, e in local.effective : name => concat(
      length(e.labels) > 0 ? ["--node-labels=${join(",", [for k in sort(keys(e.labels)) : "${k}=${e.labels[k]}"])}"] : [],
      length(e.taints) > 0 ? ["--register-with-taints=${join(",", [for t in e.taints : t.value == "" ? "${t.key}:${t.effect}" : "${t.key}=${t.value}:${t.effect}"])}"] : [],
      e.kubelet_extra_args,
    )
  }

  # Ubuntu EKS: bootstrap.sh with everything it would otherwise look up with eks:DescribeCluster.
  # The cluster DNS address is the tenth of the service CIDR, as EKS assigns it.
  bootstrap = var.cluster == null ? {} : {
    for name, flags in local.kubelet_flags : name => join("\n", concat([
      "#!/bin/bash",
      "set -euo pipefail",
      "exec /etc/eks/bootstrap.sh '${var.cluster.name}' \\",
      "  --apiserver-endpoint '${var.cluster.endpoint}' \\",
      "  --b64-cluster-ca '${var.cluster.certificate_authority}' \\",
      length(flags) > 0 ? "  --dns-cluster-ip '${cidrhost(var.cluster.service_cidr, 10)}' \\" : "  --dns-cluster-ip '${cidrhost(var.cluster.service_cidr, 10)}'",
      ], length(flags) > 0 ? ["  --kubelet-extra-args '${join(" ", flags)}'"] : [], [""]
    ))
  }

  # Amazon Linux 2023: a nodeadm NodeConfig in a MIME part of its own type.
  nodeadm = var.cluster == null ? {} : {
    for name, flags in local.kubelet_flags : name => join("\n", [
      "MIME-Version: 1.0",
      "Content-Type: multipart/mixed; boundary=\"BAKE\"",
      "",
      "--BAKE",
      "Content-Type: application/node.eks.aws",
      "",
      yamlencode({
        apiVersion = "node.eks.aws/v1alpha1"
        kind       = "NodeConfig"
        spec = merge({
          cluster = {
            name                 = var.cluster.name
            apiServerEndpoint    = var.cluster.endpoint
            certificateAuthority = var.cluster.certificate_authority
            cidr                 = var.cluster.service_cidr
          }
        }, length(flags) > 0 ? { kubelet = { flags = flags } } : {})
      }),
      "--BAKE--",
      "",
    ])
  }

  join_data = { bootstrap = local.bootstrap, nodeadm = local.nodeadm, none = {} }

  image_parameter = {
    for name, pin in var.pins : name => (
      pin.release != null
      ? "${var.ssm_prefix}/${var.recipe}/releases/${pin.release}/${var.arch}"
      : "${var.ssm_prefix}/${var.recipe}/channels/${pin.channel}/${var.arch}:${pin.channel_version}"
    )
  }

  releases = sort(distinct([for p in values(var.pins) : p.release if p.release != null]))

  # What bake wrote beside each revoked release: {reason, who, at}.
  revoked = var.release_parameters == null ? {} : {
    for r, params in var.release_parameters : r => merge({ reason = params.revoked, who = "?", at = "?" }, try(jsondecode(params.revoked), {})) if contains(keys(params), "revoked")
  }

  # Pins the plan must refuse: a revoked release, or one without this arch's image.
  refusals = var.release_parameters == null ? [] : concat(
    [
      for name, pin in var.pins : "node ${name} pins release ${pin.release} of ${var.recipe}, which was revoked ${local.revoked[pin.release].at} by ${local.revoked[pin.release].who}: ${local.revoked[pin.release].reason}. Pin the node to another release (bake pin ${var.recipe} <release> --arch ${var.arch} --node ${name}) and plan again."
      if pin.release != null && contains(keys(local.revoked), coalesce(pin.release, "-"))
    ],
    [
      for name, pin in var.pins : "node ${name} pins release ${pin.release} of ${var.recipe}, which has no ${var.arch} image under ${var.ssm_prefix}/${var.recipe}/releases/${pin.release}/ (see `bake releases ${var.recipe}`)."
      if pin.release != null && !contains(keys(lookup(var.release_parameters, coalesce(pin.release, "-"), {})), var.arch)
    ],
  )
}
