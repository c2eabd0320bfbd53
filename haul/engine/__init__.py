"""Sans-io migration state machine: phases, transitions, events, commands, policy.

Imports nothing but the standard library; the rest of haul implements its ports.
"""
