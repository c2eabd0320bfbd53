"""Hosts as network namespaces on one machine, for the demo and the tests."""
