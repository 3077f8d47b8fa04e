# Inputs. What each node is (pins, places, join data) is decided by ../eks-node-config, which
# validates every input below that it receives; `bake pin` prints the pins.

variable "ssm_prefix" {
  description = "Where bake publishes (the pipeline's [aws] ssm_prefix)."
  type        = string
  default     = "/bake"
}

variable "recipe" {
  description = "The bake recipe, e.g. \"eks-node\"."
  type        = string
}

variable "arch" {
  description = "The node set's architecture: \"x86_64\" or \"arm64\". One module instance per arch."
  type        = string
}

variable "name" {
  description = "Name of the node set; each instance is tagged Name = <name>-<node>."
  type        = string
}

variable "nodes" {
  description = "The static nodes, each named once: name, subnet_id, and optionally instance_type, labels, taints, kubelet_extra_args, user_data. A list so that a name given twice is refused (a map keeps the last without a word). See ../eks-node-config."
  type = list(object({
    name               = string
    subnet_id          = string
    instance_type      = optional(string)
    labels             = optional(map(string), {})
    taints             = optional(list(object({ key = string, value = optional(string, ""), effect = string })), [])
    kubelet_extra_args = optional(list(string), [])
    user_data          = optional(string)
  }))
}

variable "pins" {
  description = "Each node's image by node name: { release = \"2026.11.25-1\" } (`bake pin <recipe> <release> --node <name>`) or { channel = \"prod\", channel_version = 7 }. Changing one pin replaces that node alone."
  type = map(object({
    release         = optional(string)
    channel         = optional(string)
    channel_version = optional(number)
  }))
}

variable "instance_type" {
  description = "EC2 instance type unless a node names its own; must match arch (m7i.xlarge for x86_64, m7g.xlarge for arm64)."
  type        = string
}

variable "join" {
  description = "\"bootstrap\" (Ubuntu EKS: /etc/eks/bootstrap.sh), \"nodeadm\" (AL2023 NodeConfig) or \"none\" (each node's own user_data)."
  type        = string
  default     = "bootstrap"
}

variable "cluster" {
  description = "name, endpoint, certificate_authority, service_cidr of the cluster (from data \"aws_eks_cluster\"); null only with join = \"none\"."
  type = object({
    name                  = string
    endpoint              = string
    certificate_authority = string
    service_cidr          = string
  })
  default = null
}

variable "labels" {
  description = "Kubernetes labels for every node (a node's own labels win)."
  type        = map(string)
  default     = {}
}

variable "taints" {
  description = "Taints for every node, added to each node's own."
  type        = list(object({ key = string, value = optional(string, ""), effect = string }))
  default     = []
}

variable "kubelet_extra_args" {
  description = "Extra kubelet flags for every node, before each node's own."
  type        = list(string)
  default     = []
}

variable "security_group_ids" {
  description = "Security groups of the nodes (the cluster's node security group)."
  type        = list(string)
}

variable "iam_instance_profile" {
  description = "Instance profile of the nodes (the EKS node role)."
  type        = string
}

variable "termination_protection" {
  description = "EC2 termination protection (disable_api_termination) on every node: the console, the CLI and other tools cannot terminate them. Terraform still replaces a node whose pin changes and destroys one removed from `nodes` (force_destroy)."
  type        = bool
  default     = true
}

variable "detailed_monitoring" {
  description = "One-minute CloudWatch metrics for the nodes (billed per instance)."
  type        = bool
  default     = true
}

variable "root_volume_size" {
  description = "Root volume size in GiB."
  type        = number
  default     = 50
}

variable "root_volume_type" {
  description = "Root volume type."
  type        = string
  default     = "gp3"
}

variable "kms_key_id" {
  description = "KMS key for the root volume; null uses the account's default EBS key. The volume is encrypted either way."
  type        = string
  default     = null
}

variable "metadata_hop_limit" {
  description = "IMDSv2 response hop limit; 1 keeps pods without host networking away from instance credentials."
  type        = number
  default     = 1
}

variable "tags" {
  description = "Tags for the instances and their volumes."
  type        = map(string)
  default     = {}
}
