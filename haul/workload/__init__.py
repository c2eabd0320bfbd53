"""Workloads as process trees on a host: started under their own init, found, resumed,
stopped. Both sides of a migration use them: the source dumps a tree, the
destination restores one."""
