output "image_id" {
  description = "The AMI the nodes run."
  value       = data.aws_ssm_parameter.image.insecure_value
}

output "image_parameter" {
  description = "The SSM parameter (with :version for a channel) the image was read from."
  value       = local.image_parameter
}

output "instance_ids" {
  description = "The static nodes."
  value       = aws_instance.node[*].id
}
