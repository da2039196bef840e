"""
Lab harness: starts deskfleet's masters and minions from the shipped config on
loopback, and fakes thin-client hardware. Used by the tests (through
pytest-salt-factories), the demo and the benchmarks. Never used in production.
"""
