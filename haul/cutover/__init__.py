"""Load-balancer cutover: hook scripts, HAProxy runtime API (issue: network follows)."""
