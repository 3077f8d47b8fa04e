# bake pin: eks-node arm64 = ami-0example (release 2026.11.25-1; /bake/eks-node/releases/2026.11.25-1/arm64)
ssm_prefix = "/bake"
recipe     = "eks-node"
arch       = "arm64"
