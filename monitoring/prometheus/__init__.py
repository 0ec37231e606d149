"""Prometheus alert rules (``*.rules.yml``) and their promtool unit tests (``tests/*.yml``)."""
