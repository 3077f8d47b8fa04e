output "nodes" {
  description = "Per node: image_parameter (the SSM name its image is read from), release (null for a channel pin), subnet_id, instance_type, labels, taints and user_data (the rendered join data, or the node's own)."
  value = {
    for name, node in local.nodes : name => {
      image_parameter = local.image_parameter[name]
      release         = var.pins[name].release
      subnet_id       = node.subnet_id
      instance_type   = coalesce(node.instance_type, var.instance_type)
      labels          = local.effective[name].labels
      taints          = local.effective[name].taints
      user_data       = node.user_data != null ? node.user_data : lookup(local.join_data[var.join], name, null)
    }
  }

  precondition {
    condition     = length(local.problems) == 0
    error_message = join("\n", local.problems)
  }
  precondition {
    condition     = length(local.refusals) == 0
    error_message = join("\n", local.refusals)
  }
}

output "releases" {
  description = "The releases the nodes pin, each once (eks-node reads what bake keeps beside each)."
  value       = local.releases
}
