"""Benchmarks behind ``ingestd bench <name>``: each prints its figures as JSON and compares to an anchor.

Every public module here defines ``register(subparsers)`` for its own ``bench`` sub-command,
so adding a benchmark touches no shared file. Targets are stated in the benchmarks'
output, never asserted as timings in tests.
"""
