# bake pins: eks-node x86_64
# Each node's image, one line per node (the eks-node module's `pins`). Change one line,
# or run `bake pin eks-node <release> --arch x86_64 --node <name> --write <this file>`, to roll one node.
pins = {
  "trade-1" = { release = "2026.11.26-1" } # ami-0example2 (/bake/eks-node/releases/2026.11.26-1/x86_64)
  "trade-2" = { release = "2026.11.25-1" } # ami-0example (/bake/eks-node/releases/2026.11.25-1/x86_64)
  "trade-3" = { release = "2026.11.25-1" } # ami-0example (/bake/eks-node/releases/2026.11.25-1/x86_64)
}
