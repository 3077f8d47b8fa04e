# The x86_64 node set of cluster "prod", in its own state. Its image is pinned in
# image.auto.tfvars, written by:
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

module "nodes" {
  source = "../node-set"

  ssm_prefix      = var.ssm_prefix
  recipe          = var.recipe
  arch            = var.arch
  release         = var.release
  channel         = var.channel
  channel_version = var.channel_version
  instance_type   = "m7i.xlarge"
}

output "image_id" {
  value = module.nodes.image_id
}
