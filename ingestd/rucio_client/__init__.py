"""Rucio's REST API through rucio-clients: connection settings and the catalogue reads ingestd makes.

:class:`RucioSettings` (environment prefix ``INGESTD_RUCIO_``, section ``rucio``
of the configuration) says how to reach and authenticate to the server;
:class:`RucioCatalogue` lists files, their replicas at an RSE and their DID
metadata, paced and with failures sorted into transient and fatal. rucio-clients
is imported only when a client is first built.
"""

from ._catalogue import METADATA_KEYS, FileReplica, RateLimiter, RucioCatalogue, classify_rucio_error
from ._settings import RucioAuthType, RucioSettings

__all__ = [
    "METADATA_KEYS",
    "FileReplica",
    "RateLimiter",
    "RucioAuthType",
    "RucioCatalogue",
    "RucioSettings",
    "classify_rucio_error",
]
