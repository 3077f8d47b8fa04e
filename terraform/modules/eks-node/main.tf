# Static EKS nodes ("pets") on bake images, one instance per named node. Each node's image comes
# from exactly the SSM parameter bake published for its own pin, so a node changes only when its
# pin changes and someone runs `terraform apply`: rolling a node set is one pin at a time.
# The image is never ignored: no drift of the image is hidden.
#
# Replacement: a changed pin destroys the node, then creates its successor (no
# create_before_destroy: a pet's name, volumes and the jobs on it belong to one instance at a
# time, and the operator drains it first). force_destroy lets Terraform lift the termination
# protection for exactly that; everything else (console, CLI, scripts) still cannot terminate it.

module "config" {
  source = "../eks-node-config"

  ssm_prefix         = var.ssm_prefix
  recipe             = var.recipe
  arch               = var.arch
  nodes              = var.nodes
  pins               = var.pins
  instance_type      = var.instance_type
  join               = var.join
  cluster            = var.cluster
  labels             = var.labels
  taints             = var.taints
  kubelet_extra_args = var.kubelet_extra_args
  release_parameters = local.release_parameters
}

# What bake keeps beside each pinned release (its images, manifest, and `revoked` once a release
# is withdrawn): a revoked pin fails the plan with bake's reason.
data "aws_ssm_parameters_by_path" "release" {
  for_each = toset(module.config.releases)

  path = "${var.ssm_prefix}/${var.recipe}/releases/${each.key}"
}

locals {
  # None of these values is secret (AMI IDs, JSON written by bake), so the reason can be shown.
  release_parameters = {
    for release, found in data.aws_ssm_parameters_by_path.release : release => {
      for i, name in found.names : basename(name) => nonsensitive(found.values[i])
    }
  }
}

data "aws_ssm_parameter" "image" {
  for_each = module.config.nodes

  name = each.value.image_parameter
}

data "aws_ami" "image" {
  for_each = module.config.nodes

  # A revoked release's images are deprecated; its pin must still plan far enough to be refused
  # with the reason above rather than "no image found".
  include_deprecated = true

  filter {
    name   = "image-id"
    values = [data.aws_ssm_parameter.image[each.key].insecure_value]
  }
}

resource "aws_instance" "node" {
  for_each = module.config.nodes

  ami                     = data.aws_ssm_parameter.image[each.key].insecure_value
  instance_type           = each.value.instance_type
  subnet_id               = each.value.subnet_id
  vpc_security_group_ids  = var.security_group_ids
  iam_instance_profile    = var.iam_instance_profile
  user_data               = each.value.user_data
  disable_api_termination = var.termination_protection
  force_destroy           = true
  ebs_optimized           = true
  monitoring              = var.detailed_monitoring

  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = var.metadata_hop_limit
  }

  root_block_device {
    encrypted             = true
    kms_key_id            = var.kms_key_id
    volume_size           = var.root_volume_size
    volume_type           = var.root_volume_type
    delete_on_termination = true
  }

  volume_tags = merge(var.tags, {
    "bake:image-parameter" = each.value.image_parameter
  })

  tags = merge(var.tags, {
    Name                   = "${var.name}-${each.key}"
    "bake:node"            = each.key
    "bake:recipe"          = var.recipe
    "bake:arch"            = var.arch
    "bake:image-parameter" = each.value.image_parameter
    }, var.cluster == null ? {} : {
    # The EKS cluster the node joins: `bake audit --cluster` finds a cluster's nodes by it.
    "bake:cluster" = var.cluster.name
  })

  lifecycle {
    # Join data is read once, at a node's first boot: applying a change to it would stop and
    # start every running pet for nothing. A changed label, taint, flag or cluster input reaches
    # a node when it is next replaced (its pin moves, or `terraform apply -replace`).
    ignore_changes = [user_data]

    precondition {
      condition     = data.aws_ami.image[each.key].architecture == var.arch
      error_message = "Node ${each.key}: the image ${data.aws_ssm_parameter.image[each.key].insecure_value} is ${data.aws_ami.image[each.key].architecture}, but this node set is ${var.arch}."
    }
  }
}
