# The image: exactly one of `release` or `channel` + `channel_version`. Both are pins: the
# node's image changes only when one of these inputs changes and someone runs `terraform apply`.
# `bake pin` prints these values for a release or a channel.

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
}

variable "arch" {
  description = "The node set's architecture: \"x86_64\" or \"arm64\". One module instance per arch."
  type        = string

  validation {
    condition     = contains(["x86_64", "arm64"], var.arch)
    error_message = "arch must be \"x86_64\" or \"arm64\"."
  }
}

variable "release" {
  description = "A bake release, YYYY.MM.DD-N. Reads <prefix>/<recipe>/releases/<release>/<arch>, which never changes."
  type        = string
  default     = null

  validation {
    condition     = var.release == null || can(regex("^[0-9]{4}\\.[0-9]{2}\\.[0-9]{2}-[1-9][0-9]*$", var.release))
    error_message = "release must look like 2026.11.25-1 (see `bake releases <recipe>`)."
  }
  validation {
    condition     = (var.release == null) != (var.channel == null)
    error_message = "Set exactly one of release, or channel with channel_version (`bake pin` prints them)."
  }
}

variable "channel" {
  description = "A cluster channel instead of a release. Requires channel_version."
  type        = string
  default     = null
}

variable "channel_version" {
  description = "The version of <prefix>/<recipe>/channels/<channel>/<arch> to read (the VERSION column of `bake history`). A channel without a version would float; it is refused. SSM keeps only a parameter's last 100 versions, so such a pin stops resolving 100 promotions later: prefer `release` (what `bake pin --channel` prints)."
  type        = number
  default     = null

  validation {
    condition     = var.channel_version == null || try(var.channel_version >= 1 && floor(var.channel_version) == var.channel_version, false)
    error_message = "channel_version must be a whole number >= 1."
  }

  validation {
    condition     = var.channel == null || var.channel_version != null
    error_message = "channel needs channel_version: a channel without a version would move the nodes on the next apply after any promotion. Use `bake pin <recipe> --channel <cluster>`, which pins the release the channel holds."
  }
}

variable "name" {
  description = "Name of the node set; instances are tagged Name = <name>-<index>."
  type        = string
}

variable "instance_count" {
  description = "How many static nodes."
  type        = number
  default     = 1
}

variable "instance_type" {
  description = "EC2 instance type; must match arch (e.g. m7i.xlarge for x86_64, m7g.xlarge for arm64)."
  type        = string
}

variable "subnet_ids" {
  description = "Subnets to spread the nodes over (round robin)."
  type        = list(string)

  validation {
    condition     = length(var.subnet_ids) > 0
    error_message = "subnet_ids needs at least one subnet."
  }
}

variable "security_group_ids" {
  description = "Security groups of the nodes (the cluster's node security group)."
  type        = list(string)
}

variable "iam_instance_profile" {
  description = "Instance profile of the nodes (the EKS node role)."
  type        = string
}

variable "user_data" {
  description = "Cluster join user data (nodeadm NodeConfig for AL2023, bootstrap for Ubuntu EKS)."
  type        = string
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
