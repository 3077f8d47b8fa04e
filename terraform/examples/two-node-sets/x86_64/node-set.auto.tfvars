# bake pin: eks-node x86_64 = ami-0example (release 2026.11.25-1; /bake/eks-node/releases/2026.11.25-1/x86_64)
ssm_prefix = "/bake"
recipe     = "eks-node"
arch       = "x86_64"
