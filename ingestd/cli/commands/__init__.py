"""Sub-commands of ``ingestd``; every public module here defines ``register(subparsers)``."""
