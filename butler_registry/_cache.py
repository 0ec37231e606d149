"""A small bounded least-recently-used map.

The registry caches what never changes once committed (dataset type definitions, run
ids, dimension records) so that a steady stream of batches costs one statement each.
Every cache is bounded: memory stays flat however large the registry grows.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from typing import Generic, TypeVar

__all__ = ["BoundedCache"]

K = TypeVar("K")
V = TypeVar("V")


class BoundedCache(Generic[K, V]):
    """A mapping that forgets its least recently used entries beyond ``capacity``.

    Parameters
    ----------
    capacity
        Most entries kept; ``0`` disables caching.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._data: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V | None:
        """The cached value, or ``None``; marks the entry as recently used."""
        value = self._data.get(key)
        if value is not None:
            self._data.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> None:
        """Remember ``value`` for ``key``."""
        if self.capacity <= 0:
            return
        self._data[key] = value
        self._data.move_to_end(key)
        while len(self._data) > self.capacity:
            self._data.popitem(last=False)

    def update(self, items: Iterable[tuple[K, V]]) -> None:
        """Remember several entries."""
        for key, value in items:
            self.put(key, value)

    def clear(self) -> None:
        """Forget everything."""
        self._data.clear()

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: object) -> bool:
        return key in self._data
