"""Which source topics a mirror copies: explicit names, full-match regular expressions, exclusions.

Pure logic, no I/O: discovery lists the source cluster's topics and asks the
selector which of them to mirror, so topics created after start-up are picked
up by the next discovery pass. The rules are MirrorMaker 2's (``topics`` and
``topics.exclude``, both full-match, exclusion wins), so one selection renders
to either replicator.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

__all__ = ["MM2_DEFAULT_EXCLUDES", "TopicSelector"]

MM2_DEFAULT_EXCLUDES: tuple[str, ...] = (r".*[\-\.]internal", r".*\.replica", r"__.*")
"""MirrorMaker 2's default ``topics.exclude``: Connect/MM2 internal topics and Kafka's own."""


def _union(patterns: Iterable[str]) -> str:
    return "|".join(f"(?:{pattern})" for pattern in patterns)


@dataclass(frozen=True)
class TopicSelector:
    """Decides whether a source topic is mirrored.

    Parameters
    ----------
    names
        Topics mirrored by exact name.
    patterns
        Full-match regular expressions of further topics (e.g. a facility's
        ``SiteMap.topic_regex``).
    exclude
        Full-match regular expressions of topics never mirrored, whatever else matches.
    """

    names: frozenset[str] = frozenset()
    patterns: tuple[str, ...] = ()
    exclude: tuple[str, ...] = MM2_DEFAULT_EXCLUDES
    _include_re: re.Pattern[str] | None = field(init=False, repr=False, compare=False)
    _exclude_re: re.Pattern[str] | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_include_re", re.compile(_union(self.patterns)) if self.patterns else None)
        object.__setattr__(self, "_exclude_re", re.compile(_union(self.exclude)) if self.exclude else None)

    def matches(self, topic: str) -> bool:
        """Whether ``topic`` is to be mirrored."""
        if self._exclude_re is not None and self._exclude_re.fullmatch(topic):
            return False
        if topic in self.names:
            return True
        return self._include_re is not None and self._include_re.fullmatch(topic) is not None

    def select(self, topics: Iterable[str]) -> list[str]:
        """The matching topics among ``topics``, sorted."""
        return sorted(topic for topic in topics if self.matches(topic))

    def include_patterns(self) -> list[str]:
        """Every inclusion as a regular expression: escaped names first, then the patterns.

        This is the list MirrorMaker 2 takes as ``topics``.
        """
        return [re.escape(name) for name in sorted(self.names)] + list(self.patterns)
