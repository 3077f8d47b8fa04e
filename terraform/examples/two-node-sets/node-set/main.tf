# One static node set of cluster "prod" on bake images; x86_64/ and arm64/ each call it from
# their own state, so applying one never touches the other. Each node has its own pin
# (pins.auto.tfvars): rolling the set is one node at a time.

variable "ssm_prefix" {
  type = string
}
variable "recipe" {
  type = string
}
variable "arch" {
  type = string
}
variable "instance_type" {
  type = string
}
variable "nodes" {
  description = "The named nodes and their subnets (nodes.auto.tfvars), each named once."
  type = list(object({
    name          = string
    subnet_id     = string
    instance_type = optional(string)
    labels        = optional(map(string), {})
  }))
}
variable "pins" {
  description = "Each node's release (pins.auto.tfvars; `bake pin --node` prints an entry)."
  type = map(object({
    release         = optional(string)
    channel         = optional(string)
    channel_version = optional(number)
  }))
}
variable "cluster_name" {
  type    = string
  default = "prod"
}

data "aws_eks_cluster" "this" {
  name = var.cluster_name
}

module "nodes" {
  source = "../../../modules/eks-node"

  ssm_prefix    = var.ssm_prefix
  recipe        = var.recipe
  arch          = var.arch
  name          = "${var.cluster_name}-${var.arch}"
  nodes         = var.nodes
  pins          = var.pins
  instance_type = var.instance_type

  # Ubuntu EKS images join with bootstrap.sh; an AL2023 recipe would say join = "nodeadm".
  join = "bootstrap"
  cluster = {
    name                  = data.aws_eks_cluster.this.name
    endpoint              = data.aws_eks_cluster.this.endpoint
    certificate_authority = data.aws_eks_cluster.this.certificate_authority[0].data
    service_cidr          = data.aws_eks_cluster.this.kubernetes_network_config[0].service_ipv4_cidr
  }
  labels = { "node.kubernetes.io/lifecycle" = "static" }

  security_group_ids   = [data.aws_eks_cluster.this.vpc_config[0].cluster_security_group_id]
  iam_instance_profile = "eks-node"
  root_volume_size     = 80

  tags = {
    cluster = var.cluster_name
  }
}

output "nodes" {
  value = module.nodes.nodes
}
