# The arm64 node set of cluster "prod", in its own state. Three inputs files:
#   node-set.auto.tfvars  recipe, arch, prefix   bake pin eks-node <release> --arch arm64 -p pipelines/aws.toml
#   nodes.auto.tfvars     the named nodes and their subnets (yours)
#   pins.auto.tfvars      each node's release, one line per node. Rolling one node:
#     bake pin eks-node <release> --arch arm64 --node trade-1 --write pins.auto.tfvars -p pipelines/aws.toml
#     terraform plan      # exactly one node replaced: trade-1
#     (drain trade-1) terraform apply, then the next node.

terraform {
  required_version = ">= 1.10" # the S3 backend's use_lockfile

  backend "s3" {
    bucket       = "example-terraform-state"
    key          = "prod/nodes-arm64.tfstate"
    region       = "us-east-1"
    use_lockfile = true
  }

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 6.8"
    }
  }
}

provider "aws" {
  region = "us-east-1"
}

# The node set (image.auto.tfvars), its nodes (nodes.auto.tfvars) and each node's pin
# (pins.auto.tfvars, one line per node).
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
variable "nodes" {
  type = map(object({
    subnet_id     = string
    instance_type = optional(string)
    labels        = optional(map(string), {})
  }))
}
variable "pins" {
  type = map(object({
    release         = optional(string)
    channel         = optional(string)
    channel_version = optional(number)
  }))
}

module "nodes" {
  source = "../node-set"

  ssm_prefix    = var.ssm_prefix
  recipe        = var.recipe
  arch          = var.arch
  instance_type = "m7g.xlarge"
  nodes         = var.nodes
  pins          = var.pins
}

output "nodes" {
  value = module.nodes.nodes
}
