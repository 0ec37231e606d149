"""Deployment material: the local test bed, site files and their renderers, systemd, Kubernetes, MM2.

A folder of the repository, not an installed package; run its tools from the checkout
(``python -m deploy.local up``).
"""
