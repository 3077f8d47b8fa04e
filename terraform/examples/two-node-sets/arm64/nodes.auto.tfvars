# The node set's pets by name, each in its own subnet. Adding or removing one touches no other.
nodes = {
  "trade-1" = { subnet_id = "subnet-0aaaaaaaaaaaaaaa1" }
  "trade-2" = { subnet_id = "subnet-0aaaaaaaaaaaaaaa2" }
  "trade-3" = { subnet_id = "subnet-0aaaaaaaaaaaaaaa1", labels = { "example.com/desk" = "fx" } }
}
