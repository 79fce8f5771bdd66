"""The synthetic web: a deterministic model of many hosts, its server and its process runner."""
