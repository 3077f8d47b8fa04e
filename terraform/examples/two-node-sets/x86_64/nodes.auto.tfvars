# The node set's pets, each named once and in its own subnet. Adding or removing one touches no
# other; a name given twice is refused.
nodes = [
  { name = "trade-1", subnet_id = "subnet-0aaaaaaaaaaaaaaa1" },
  { name = "trade-2", subnet_id = "subnet-0aaaaaaaaaaaaaaa2" },
  { name = "trade-3", subnet_id = "subnet-0aaaaaaaaaaaaaaa1", labels = { "example.com/desk" = "fx" } },
]
