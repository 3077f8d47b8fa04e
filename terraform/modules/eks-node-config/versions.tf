terraform {
  # 1.9: validations that read other variables. No providers: `terraform init`, `plan` and
  # `test` run offline, which is how bake's tests evaluate everything the node module decides.
  required_version = ">= 1.9"
}
