"""A workload's own network: its namespace, its veth on the host's bridge, its address.

See :mod:`haul.net.spec` for the model and the documented layout.
"""
