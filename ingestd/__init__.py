"""ingestd: Rucio transfer events to a Butler registry, for the Rubin Data Facilities.

Importing this package does no I/O and pulls in no heavy dependency; the CLI
(`ingestd.cli`) loads settings, configures logging and only then builds clients.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("df-ingestd")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
