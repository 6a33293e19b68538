"""netns: container networking (DESIGN.md, issue 5).

network.py is the API the engine calls (networks; setup, teardown and gc per
sandbox owner). Under it: namespace.py (named network namespaces), bridge.py
(bridge and veth pairs over rtnetlink, through _pyroute's lean pyroute2),
ipam.py (file-based address leases), nat.py (nftables masquerade and port
mapping) and dns.py (resolv.conf, hosts, hostname). Import-free on purpose:
importing one submodule must not load the others.
"""
