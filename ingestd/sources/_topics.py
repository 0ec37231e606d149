"""Which topics a consumer reads: explicit names and/or a pattern, with or without a mirror prefix.

MirrorMaker 2's default replication policy renames ``X`` to ``usdf.X`` on the
facility's cluster, while the identity policy keeps ``X``; sites disagree. A
selection therefore matches both forms, and :meth:`TopicSelection.canonical`
gives the name without the alias for URL-prefix lookups.

The same regular expression is evaluated by librdkafka (``^``-prefixed
subscriptions follow topics created later) and by Python (``ingestd check``), so
it is written in the subset both understand: plain groups, ``|``, ``?``, ``*``,
``.``, and backslash escapes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property

__all__ = ["TopicSelection", "escape_topic"]

_SPECIALS = frozenset(".^$|()[]*+?{}\\")


def escape_topic(name: str) -> str:
    """Escape a topic name for a regular expression both librdkafka and Python read the same way."""
    return "".join(f"\\{char}" if char in _SPECIALS else char for char in name)


@dataclass(frozen=True)
class TopicSelection:
    """The topics of one subscription.

    Parameters
    ----------
    topics
        Exact names (each also matched as ``ALIAS.name``).
    pattern
        A regular expression the rest of a name must match in full (also after ``ALIAS.``).
    aliases
        Source-cluster aliases that may prefix a mirrored name (``usdf``).
    extra_topics
        Exact names matched as they are, without aliases (the retry topic).
    """

    topics: Sequence[str] = ()
    pattern: str | None = None
    aliases: Sequence[str] = ("usdf",)
    extra_topics: Sequence[str] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if not self.topics and not self.pattern and not self.extra_topics:
            raise ValueError("a topic selection needs topics, a topic pattern, or both")

    @cached_property
    def regex(self) -> str:
        """The subscription regex, ``^``-anchored as librdkafka wants it, matching whole names."""
        names = [escape_topic(name) for name in self.topics]
        if self.pattern:
            names.append(f"({self.pattern})")
        alternatives: list[str] = []
        if names:
            body = "|".join(names)
            if self.aliases:
                prefix = "|".join(escape_topic(alias) for alias in self.aliases)
                alternatives.append(f"(({prefix})\\.)?({body})")
            else:
                alternatives.append(f"({body})")
        alternatives.extend(escape_topic(name) for name in self.extra_topics)
        return "^(" + "|".join(alternatives) + ")$"

    @cached_property
    def _compiled(self) -> re.Pattern[str]:
        return re.compile(self.regex)

    def matches(self, topic: str) -> bool:
        """Whether ``topic`` belongs to the selection."""
        return self._compiled.match(topic) is not None

    def select(self, topics: Iterable[str]) -> list[str]:
        """The matching names among ``topics``, sorted; internal topics (``__...``) never match."""
        return sorted(name for name in topics if not name.startswith("__") and self.matches(name))

    def canonical(self, topic: str) -> str:
        """``topic`` without a source-alias prefix (``usdf.X`` -> ``X``)."""
        for alias in self.aliases:
            if topic.startswith(f"{alias}."):
                return topic[len(alias) + 1 :]
        return topic
