output "nodes" {
  description = "Per node: instance_id, image_id and image_parameter (with :version for a channel pin)."
  value = {
    for name, node in aws_instance.node : name => {
      instance_id     = node.id
      image_id        = node.ami
      image_parameter = module.config.nodes[name].image_parameter
    }
  }
}
