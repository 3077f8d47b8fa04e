terraform {
  # 1.9: validations that read other variables (in ../eks-node-config).
  required_version = ">= 1.9"

  required_providers {
    aws = {
      source = "hashicorp/aws"
      # 6.8: aws_instance.force_destroy. Before it, provider versions 4.16+ lifted termination
      # protection silently on destroy; with it and later, destroying a protected instance fails
      # unless force_destroy was applied first. Requiring 6.8 makes a pin change replace the
      # node in one apply on every provider version this module allows.
      version = ">= 6.8"
    }
  }
}
