# What each static node of one node set is: its pin, its place and how it joins the cluster.
# Provider-free on purpose: everything here is decided from inputs, so `terraform test` proves it
# offline. terraform/modules/eks-node passes its inputs through and launches the instances.

variable "ssm_prefix" {
  description = "Where bake publishes (the pipeline's [aws] ssm_prefix)."
  type        = string
  default     = "/bake"

  validation {
    condition     = can(regex("^/[A-Za-z0-9_./-]*[A-Za-z0-9_.-]$", var.ssm_prefix))
    error_message = "ssm_prefix must start with / and not end with /, e.g. \"/bake\"."
  }
}

variable "recipe" {
  description = "The bake recipe, e.g. \"eks-node\"."
  type        = string

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9-]{0,62}$", var.recipe))
    error_message = "recipe must be a bake recipe name: lower-case letters, digits and -."
  }
}

variable "arch" {
  description = "The node set's architecture: \"x86_64\" or \"arm64\". One node set per arch."
  type        = string

  validation {
    condition     = contains(["x86_64", "arm64"], var.arch)
    error_message = "arch must be \"x86_64\" or \"arm64\"."
  }
}

variable "nodes" {
  description = <<-EOT
    The static nodes, each named once. Adding or removing one touches no other; each keeps its
    place (subnet) and its own pin in `pins`. Per node: name, subnet_id, and optionally
    instance_type, labels, taints, kubelet_extra_args (added to the node set's), or user_data
    (used verbatim instead of the join data the module renders). A list, not a map: Terraform
    keeps the last of two equal keys in a map without a word, so a copied line that kept its name
    would silently replace a node; here it is refused.
  EOT
  type = list(object({
    name               = string
    subnet_id          = string
    instance_type      = optional(string)
    labels             = optional(map(string), {})
    taints             = optional(list(object({ key = string, value = optional(string, ""), effect = string })), [])
    kubelet_extra_args = optional(list(string), [])
    user_data          = optional(string)
  }))

  validation {
    condition     = length(var.nodes) > 0
    error_message = "nodes needs at least one node."
  }
  validation {
    condition     = length(distinct(var.nodes[*].name)) == length(var.nodes)
    error_message = "Each node is named once; named more than once: ${join(", ", [for name in distinct(var.nodes[*].name) : name if length([for n in var.nodes : n if n.name == name]) > 1])}."
  }
  validation {
    condition     = alltrue([for n in var.nodes[*].name : can(regex("^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$", n))])
    error_message = "Node names are lower-case letters, digits and - (at most 32, not starting or ending with -): ${join(", ", [for n in var.nodes[*].name : n if !can(regex("^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$", n))])}."
  }
  validation {
    condition     = alltrue([for n in var.nodes : can(regex("^subnet-[0-9a-f]{8,17}$", n.subnet_id))])
    error_message = "Each node's subnet_id must be a subnet ID (subnet-0123abcd...)."
  }
}

variable "pins" {
  description = <<-EOT
    Each node's image, by node name: { release = "2026.11.25-1" } (what `bake pin <recipe>
    <release> --node <name>` prints), or { channel = "prod", channel_version = 7 }. Changing one
    node's pin replaces that node alone on the next apply; nothing else moves it.
  EOT
  type = map(object({
    release         = optional(string)
    channel         = optional(string)
    channel_version = optional(number)
  }))

  validation {
    condition     = sort(keys(var.pins)) == sort(distinct(var.nodes[*].name))
    error_message = "pins and nodes must name the same nodes. Without a pin: ${jsonencode(setsubtract(var.nodes[*].name, keys(var.pins)))}; pinned but not a node: ${jsonencode(setsubtract(keys(var.pins), var.nodes[*].name))}."
  }
  validation {
    condition     = alltrue([for p in values(var.pins) : (p.release == null) != (p.channel == null)])
    error_message = "Each pin sets exactly one of release, or channel with channel_version (`bake pin` prints them): ${join(", ", [for n, p in var.pins : n if(p.release == null) == (p.channel == null)])}."
  }
  validation {
    condition     = alltrue([for p in values(var.pins) : p.release == null || can(regex("^[0-9]{4}\\.[0-9]{2}\\.[0-9]{2}-[1-9][0-9]*$", p.release))])
    error_message = "A release looks like 2026.11.25-1 (see `bake releases <recipe>`): ${join(", ", [for n, p in var.pins : "${n} = ${p.release}" if p.release != null && !can(regex("^[0-9]{4}\\.[0-9]{2}\\.[0-9]{2}-[1-9][0-9]*$", coalesce(p.release, "x")))])}."
  }
  validation {
    condition     = alltrue([for p in values(var.pins) : p.channel == null || try(p.channel_version >= 1 && floor(p.channel_version) == p.channel_version, false)])
    error_message = "A channel pin needs channel_version, a whole number >= 1: a channel without a version would move the node on the next apply after any promotion. `bake pin <recipe> --channel <cluster> --node <name>` pins the release the channel holds instead."
  }
  validation {
    condition     = alltrue([for p in values(var.pins) : p.channel_version == null || p.channel != null])
    error_message = "channel_version without channel: set both, or pin a release."
  }
}

variable "instance_type" {
  description = "The nodes' EC2 instance type unless a node names its own; must match arch (m7i.xlarge for x86_64, m7g.xlarge for arm64)."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]*\\.[a-z0-9]+$", var.instance_type))
    error_message = "instance_type must be an EC2 instance type such as m7i.xlarge."
  }
}

variable "join" {
  description = <<-EOT
    How the image joins the cluster: "bootstrap" (Ubuntu EKS images: /etc/eks/bootstrap.sh),
    "nodeadm" (Amazon Linux 2023: a NodeConfig), or "none" (every node brings its own user_data).
  EOT
  type        = string
  default     = "bootstrap"

  validation {
    condition     = contains(["bootstrap", "nodeadm", "none"], var.join)
    error_message = "join must be \"bootstrap\" (Ubuntu EKS), \"nodeadm\" (AL2023) or \"none\"."
  }
}

variable "cluster" {
  description = <<-EOT
    The cluster the nodes join, as `eks:DescribeCluster` (data "aws_eks_cluster") gives it:
    name, endpoint, certificate_authority (base64), service_cidr
    (kubernetes_network_config[0].service_ipv4_cidr). Null only with join = "none".
  EOT
  type = object({
    name                  = string
    endpoint              = string
    certificate_authority = string
    service_cidr          = string
  })
  default = null

  validation {
    condition     = var.cluster != null || var.join == "none"
    error_message = "cluster is required to render the join data (join = \"${var.join}\")."
  }
  validation {
    condition     = var.cluster == null || can(regex("^[0-9A-Za-z][A-Za-z0-9_-]{0,99}$", var.cluster.name))
    error_message = "cluster.name must be an EKS cluster name."
  }
  validation {
    condition     = var.cluster == null || can(regex("^https://[^\\s'\"]+$", var.cluster.endpoint))
    error_message = "cluster.endpoint must be the https:// API server endpoint."
  }
  validation {
    condition     = var.cluster == null || can(base64decode(var.cluster.certificate_authority))
    error_message = "cluster.certificate_authority must be the base64 CA data (certificate_authority[0].data)."
  }
  validation {
    condition     = var.cluster == null || can(cidrhost(var.cluster.service_cidr, 10))
    error_message = "cluster.service_cidr must be a CIDR such as 172.20.0.0/16."
  }
}

variable "labels" {
  description = "Kubernetes labels for every node of the set (a node's own labels win)."
  type        = map(string)
  default     = {}
}

variable "taints" {
  description = "Taints for every node of the set, added to each node's own."
  type        = list(object({ key = string, value = optional(string, ""), effect = string }))
  default     = []
}

variable "kubelet_extra_args" {
  description = "Extra kubelet flags for every node of the set (e.g. \"--max-pods=58\"), before each node's own."
  type        = list(string)
  default     = []
}

variable "release_parameters" {
  description = <<-EOT
    What bake keeps beside each pinned release: release => { leaf name => value } under
    <ssm_prefix>/<recipe>/releases/<release>/ (eks-node reads it with aws_ssm_parameters_by_path).
    A release with a `revoked` entry fails the plan. Null: not checked.
  EOT
  type        = map(map(string))
  default     = null
}
