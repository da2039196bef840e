"""Benchmarks for deskfleet (``make bench``). Bench-only code: nothing here ships to a master."""
