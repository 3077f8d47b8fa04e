# The provider-free half of terraform/modules/eks-node, wired the way eks-node wires it, for
# `terraform init` / `plan` offline (tests/terraform.rs). `published` stands for what SSM holds
# under <prefix>/<recipe>/releases/: eks-node reads each pinned release's directory with
# aws_ssm_parameters_by_path; here the test reads it from the emulator with the SDK.

terraform {
  required_version = ">= 1.9"
}

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
  type    = string
  default = "m7i.xlarge"
}
variable "nodes" {
  type = any
}
variable "pins" {
  type = any
}
variable "join" {
  type    = string
  default = "bootstrap"
}
variable "cluster" {
  type    = any
  default = null
}
variable "published" {
  description = "release => { leaf name => value }, every release the emulator holds."
  type        = map(map(string))
}

module "config" {
  source = "../../../terraform/modules/eks-node-config"

  ssm_prefix    = var.ssm_prefix
  recipe        = var.recipe
  arch          = var.arch
  instance_type = var.instance_type
  nodes         = var.nodes
  pins          = var.pins
  join          = var.join
  cluster       = var.cluster
  # As eks-node: only the pinned releases' directories, keyed by the module's own output.
  release_parameters = { for r in module.config.releases : r => lookup(var.published, r, {}) }
}

output "nodes" {
  value = module.config.nodes
}
