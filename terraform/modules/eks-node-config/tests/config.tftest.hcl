# `terraform test` for what the node module decides offline: the parameter each pin reads, the
# join data it renders, and every refusal. bake's test suite runs it (tests/terraform.rs).

variables {
  recipe        = "eks-node"
  arch          = "x86_64"
  instance_type = "m7i.xlarge"
  cluster = {
    name                  = "prod"
    endpoint              = "https://ABCDEF0123456789.gr7.us-east-1.eks.amazonaws.com"
    certificate_authority = "TFMwdExTMUNSVWRKVGlCRFJWSlVTVVpKUTBGVVJTMHRMUzB0Q2c9PQ=="
    service_cidr          = "172.20.0.0/16"
  }
  nodes = [
    { name = "trade-1", subnet_id = "subnet-0aaaaaaaaaaaaaaa1" },
    { name = "trade-2", subnet_id = "subnet-0aaaaaaaaaaaaaaa2", instance_type = "m7i.2xlarge", labels = { "example.com/pool" = "trade" } },
  ]
  pins = {
    trade-1 = { release = "2026.11.25-1" }
    trade-2 = { release = "2026.11.26-2" }
  }
}

run "each_node_reads_its_own_release_parameter" {
  command = plan

  assert {
    condition     = output.nodes["trade-1"].image_parameter == "/bake/eks-node/releases/2026.11.25-1/x86_64"
    error_message = "trade-1 reads ${output.nodes["trade-1"].image_parameter}"
  }
  assert {
    condition     = output.nodes["trade-2"].image_parameter == "/bake/eks-node/releases/2026.11.26-2/x86_64"
    error_message = "trade-2 reads ${output.nodes["trade-2"].image_parameter}"
  }
  assert {
    condition     = output.releases == tolist(["2026.11.25-1", "2026.11.26-2"])
    error_message = "releases: ${jsonencode(output.releases)}"
  }
  assert {
    condition     = output.nodes["trade-1"].instance_type == "m7i.xlarge" && output.nodes["trade-2"].instance_type == "m7i.2xlarge"
    error_message = "instance types: ${jsonencode({ for k, v in output.nodes : k => v.instance_type })}"
  }
  assert {
    condition     = output.nodes["trade-2"].subnet_id == "subnet-0aaaaaaaaaaaaaaa2"
    error_message = "each node keeps its own subnet"
  }
}

run "a_channel_pin_reads_one_version_of_the_channel" {
  command = plan
  variables {
    pins = {
      trade-1 = { channel = "prod", channel_version = 7 }
      trade-2 = { release = "2026.11.26-2" }
    }
  }
  assert {
    condition     = output.nodes["trade-1"].image_parameter == "/bake/eks-node/channels/prod/x86_64:7"
    error_message = "trade-1 reads ${output.nodes["trade-1"].image_parameter}"
  }
  assert {
    condition     = output.nodes["trade-1"].release == null && output.releases == tolist(["2026.11.26-2"])
    error_message = "a channel pin names no release"
  }
}

run "ubuntu_eks_nodes_join_with_bootstrap_sh" {
  command = plan
  variables {
    labels = { "node.kubernetes.io/role" = "pets" }
    taints = [{ key = "dedicated", value = "trade", effect = "NoSchedule" }]
  }
  assert {
    condition     = output.nodes["trade-1"].user_data == <<-EOT
      #!/bin/bash
      set -euo pipefail
      exec /etc/eks/bootstrap.sh 'prod' \
        --apiserver-endpoint 'https://ABCDEF0123456789.gr7.us-east-1.eks.amazonaws.com' \
        --b64-cluster-ca 'TFMwdExTMUNSVWRKVGlCRFJWSlVTVVpKUTBGVVJTMHRMUzB0Q2c9PQ==' \
        --dns-cluster-ip '172.20.0.10' \
        --kubelet-extra-args '--node-labels=node.kubernetes.io/role=pets --register-with-taints=dedicated=trade:NoSchedule'
      EOT
    error_message = "trade-1 user data:\n${output.nodes["trade-1"].user_data}"
  }
  assert {
    condition     = strcontains(output.nodes["trade-2"].user_data, "--node-labels=example.com/pool=trade,node.kubernetes.io/role=pets ")
    error_message = "trade-2 gets the set's labels and its own:\n${output.nodes["trade-2"].user_data}"
  }
}

run "al2023_nodes_join_with_a_nodeadm_nodeconfig" {
  command = plan
  variables {
    join               = "nodeadm"
    kubelet_extra_args = ["--max-pods=58"]
  }
  assert {
    condition     = startswith(output.nodes["trade-1"].user_data, "MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=\"BAKE\"\n\n--BAKE\nContent-Type: application/node.eks.aws\n\n")
    error_message = "not a nodeadm MIME part:\n${output.nodes["trade-1"].user_data}"
  }
  assert {
    condition = yamldecode(split("\n--BAKE", split("Content-Type: application/node.eks.aws\n\n", output.nodes["trade-1"].user_data)[1])[0]) == {
      apiVersion = "node.eks.aws/v1alpha1"
      kind       = "NodeConfig"
      spec = {
        cluster = {
          name                 = "prod"
          apiServerEndpoint    = "https://ABCDEF0123456789.gr7.us-east-1.eks.amazonaws.com"
          certificateAuthority = "TFMwdExTMUNSVWRKVGlCRFJWSlVTVVpKUTBGVVJTMHRMUzB0Q2c9PQ=="
          cidr                 = "172.20.0.0/16"
        }
        kubelet = { flags = ["--max-pods=58"] }
      }
    }
    error_message = "NodeConfig:\n${output.nodes["trade-1"].user_data}"
  }
}

run "a_node_may_bring_its_own_user_data" {
  command = plan
  variables {
    join  = "none"
    nodes = [{ name = "solo", subnet_id = "subnet-0aaaaaaaaaaaaaaa1", user_data = "#cloud-config\n{}\n" }]
    pins  = { solo = { release = "2026.11.25-1" } }
  }
  assert {
    condition     = output.nodes["solo"].user_data == "#cloud-config\n{}\n"
    error_message = "own user data is used verbatim"
  }
}

run "every_node_needs_exactly_one_pin" {
  command = plan
  variables {
    pins = { trade-1 = { release = "2026.11.25-1" }, trade-3 = { release = "2026.11.25-1" } }
  }
  expect_failures = [var.pins]
}

run "a_channel_without_a_version_would_float" {
  command = plan
  variables {
    pins = { trade-1 = { channel = "prod" }, trade-2 = { release = "2026.11.25-1" } }
  }
  expect_failures = [var.pins]
}

run "a_release_and_a_channel_at_once_is_refused" {
  command = plan
  variables {
    pins = { trade-1 = { release = "2026.11.25-1", channel = "prod", channel_version = 2 }, trade-2 = { release = "2026.11.25-1" } }
  }
  expect_failures = [var.pins]
}

run "a_malformed_release_is_refused" {
  command = plan
  variables {
    pins = { trade-1 = { release = "latest" }, trade-2 = { release = "2026.11.25-1" } }
  }
  expect_failures = [var.pins]
}

run "a_bad_node_name_is_refused" {
  command = plan
  variables {
    nodes = [{ name = "Trade_1", subnet_id = "subnet-0aaaaaaaaaaaaaaa1" }]
    pins  = { "Trade_1" = { release = "2026.11.25-1" } }
  }
  expect_failures = [var.nodes]
}

run "a_node_named_twice_is_refused" {
  # A copied line that kept its name: in a map Terraform would keep the second without a word.
  command = plan
  variables {
    nodes = [
      { name = "trade-1", subnet_id = "subnet-0aaaaaaaaaaaaaaa1" },
      { name = "trade-2", subnet_id = "subnet-0aaaaaaaaaaaaaaa2" },
      { name = "trade-1", subnet_id = "subnet-0aaaaaaaaaaaaaaa2" },
    ]
  }
  expect_failures = [var.nodes]
}

run "a_label_the_kubelet_may_not_set_is_refused" {
  command = plan
  variables {
    labels = { "node-role.kubernetes.io/worker" = "" }
  }
  expect_failures = [output.nodes]
}

run "a_bad_taint_effect_is_refused" {
  command = plan
  variables {
    taints = [{ key = "dedicated", effect = "NoSchedul" }]
  }
  expect_failures = [output.nodes]
}

run "labels_through_kubelet_flags_are_refused" {
  command = plan
  variables {
    kubelet_extra_args = ["--node-labels=a=b"]
  }
  expect_failures = [output.nodes]
}

run "a_bad_cluster_cidr_is_refused" {
  command = plan
  variables {
    cluster = {
      name                  = "prod"
      endpoint              = "https://example.eks.amazonaws.com"
      certificate_authority = "TFMwdExTMUNSVWRKVGlCRFJWSlVTVVpKUTBGVVJTMHRMUzB0Q2c9PQ=="
      service_cidr          = "172.20.0.0"
    }
  }
  expect_failures = [var.cluster]
}

run "a_revoked_release_fails_the_plan" {
  command = plan
  variables {
    release_parameters = {
      "2026.11.25-1" = { x86_64 = "ami-0123456789abcdef0", revoked = "{\"reason\":\"kernel panic on m7i\",\"who\":\"ops\",\"at\":\"2026-11-27T10:00:00Z\"}" }
      "2026.11.26-2" = { x86_64 = "ami-0123456789abcdef1" }
    }
  }
  expect_failures = [output.nodes]
}

run "a_release_without_this_arch_fails_the_plan" {
  command = plan
  variables {
    release_parameters = {
      "2026.11.25-1" = { arm64 = "ami-0123456789abcdef0" }
      "2026.11.26-2" = { x86_64 = "ami-0123456789abcdef1" }
    }
  }
  expect_failures = [output.nodes]
}

run "published_unrevoked_releases_pass" {
  command = plan
  variables {
    release_parameters = {
      "2026.11.25-1" = { x86_64 = "ami-0123456789abcdef0", manifest = "{}" }
      "2026.11.26-2" = { x86_64 = "ami-0123456789abcdef1" }
    }
  }
  assert {
    condition     = length(output.nodes) == 2
    error_message = "both nodes plan"
  }
}
