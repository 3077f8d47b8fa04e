# One static node set of cluster "prod" on a pinned bake image; x86_64/ and arm64/ each call it
# from their own state, so applying one never touches the other.

variable "ssm_prefix" {
  type = string
}
variable "recipe" {
  type = string
}
variable "arch" {
  type = string
}
variable "release" {
  type    = string
  default = null
}
variable "channel" {
  type    = string
  default = null
}
variable "channel_version" {
  type    = number
  default = null
}
variable "instance_type" {
  type = string
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

  ssm_prefix      = var.ssm_prefix
  recipe          = var.recipe
  arch            = var.arch
  release         = var.release
  channel         = var.channel
  channel_version = var.channel_version

  name                 = "${var.cluster_name}-${var.arch}"
  instance_count       = 3
  instance_type        = var.instance_type
  subnet_ids           = ["subnet-0aaaaaaaaaaaaaaa1", "subnet-0aaaaaaaaaaaaaaa2"]
  security_group_ids   = [data.aws_eks_cluster.this.vpc_config[0].cluster_security_group_id]
  iam_instance_profile = "eks-node"
  root_volume_size     = 80

  # Ubuntu EKS images join with bootstrap.sh; an AL2023 recipe would pass a nodeadm NodeConfig.
  user_data = <<-EOT
    #!/bin/bash
    set -euo pipefail
    /etc/eks/bootstrap.sh ${var.cluster_name} \
      --apiserver-endpoint ${data.aws_eks_cluster.this.endpoint} \
      --b64-cluster-ca ${data.aws_eks_cluster.this.certificate_authority[0].data}
  EOT

  tags = {
    cluster = var.cluster_name
  }
}

output "image_id" {
  value = module.nodes.image_id
}

output "image_parameter" {
  value = module.nodes.image_parameter
}
