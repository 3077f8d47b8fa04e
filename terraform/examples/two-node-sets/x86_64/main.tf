# The x86_64 node set of cluster "prod", in its own state: applying it never touches the other
# node set. Its image is pinned in image.auto.tfvars, written by:
#   bake pin eks-node <release> --arch x86_64 -p pipelines/aws.toml > image.auto.tfvars

terraform {
  required_version = ">= 1.9"

  backend "s3" {
    bucket       = "example-terraform-state"
    key          = "prod/nodes-x86_64.tfstate"
    region       = "us-east-1"
    use_lockfile = true
  }

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.0"
    }
  }
}

provider "aws" {
  region = "us-east-1"
}

# The pin, from image.auto.tfvars (`bake pin` prints exactly these names).
variable "ssm_prefix" {
  type    = string
  default = "/bake"
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

  name                 = "${var.cluster_name}-x86_64"
  instance_count       = 3
  instance_type        = "m7i.xlarge"
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
