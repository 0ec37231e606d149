"""Target topic naming, compatible with MirrorMaker 2's replication policies.

Sites disagree today: FrDF runs MirrorMaker 2 with ``IdentityReplicationPolicy``
(``X`` stays ``X``), RAL with the ``DefaultReplicationPolicy`` (``X`` becomes
``usdf.X``). Both are offered here with MirrorMaker 2's exact rules, so a site
can swap one replicator for the other without its consumers noticing.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

__all__ = ["ReplicationPolicy", "TopicNaming"]


class ReplicationPolicy(StrEnum):
    """How a source topic is named on the target cluster."""

    identity = "identity"
    """Same name (MirrorMaker 2 ``IdentityReplicationPolicy``), as at FrDF."""
    prefix = "prefix"
    """``<source alias><separator><name>`` (MirrorMaker 2 ``DefaultReplicationPolicy``), as at RAL."""

    @property
    def mm2_class(self) -> str:
        """The MirrorMaker 2 ``replication.policy.class`` with the same behaviour."""
        if self is ReplicationPolicy.identity:
            return "org.apache.kafka.connect.mirror.IdentityReplicationPolicy"
        return "org.apache.kafka.connect.mirror.DefaultReplicationPolicy"


@dataclass(frozen=True)
class TopicNaming:
    """Maps source topic names to target topic names.

    Parameters
    ----------
    policy
        Identity or prefix.
    source_alias
        The source cluster's alias (MirrorMaker 2's cluster alias), e.g. ``usdf``.
    separator
        MirrorMaker 2's ``replication.policy.separator``; ``.`` by default.
    """

    policy: ReplicationPolicy
    source_alias: str
    separator: str = "."

    def target_topic(self, source_topic: str) -> str:
        """The name ``source_topic`` has on the target cluster."""
        if self.policy is ReplicationPolicy.identity:
            return source_topic
        return f"{self.source_alias}{self.separator}{source_topic}"
