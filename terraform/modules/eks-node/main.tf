# Static EKS nodes on a bake image. The image comes from exactly the SSM parameter bake
# publishes for the pinned release (or the pinned version of a channel), so a node changes image
# only when a pinned input changes and someone runs `terraform apply`. Nothing here ignores
# changes: no drift is hidden.

locals {
  image_parameter = var.release != null ? "${var.ssm_prefix}/${var.recipe}/releases/${var.release}/${var.arch}" : "${var.ssm_prefix}/${var.recipe}/channels/${var.channel}/${var.arch}:${var.channel_version}"
}

data "aws_ssm_parameter" "image" {
  name = local.image_parameter
}

data "aws_ami" "image" {
  filter {
    name   = "image-id"
    values = [data.aws_ssm_parameter.image.insecure_value]
  }
}

resource "aws_instance" "node" {
  count = var.instance_count

  ami                     = data.aws_ssm_parameter.image.insecure_value
  instance_type           = var.instance_type
  subnet_id               = var.subnet_ids[count.index % length(var.subnet_ids)]
  vpc_security_group_ids  = var.security_group_ids
  iam_instance_profile    = var.iam_instance_profile
  user_data               = var.user_data
  disable_api_termination = true

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
    "bake:image-parameter" = local.image_parameter
  })

  tags = merge(var.tags, {
    Name                   = "${var.name}-${count.index}"
    "bake:recipe"          = var.recipe
    "bake:arch"            = var.arch
    "bake:image-parameter" = local.image_parameter
  })

  lifecycle {
    precondition {
      condition     = data.aws_ami.image.architecture == var.arch
      error_message = "The image ${data.aws_ssm_parameter.image.insecure_value} is ${data.aws_ami.image.architecture}, but this node set is ${var.arch}."
    }
  }
}
