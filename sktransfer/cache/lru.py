"""A least-recently-used mapping bounded in size: the one eviction loop of the library.

Used by the feature cache's memory tier (bounded in bytes), the head memo and its bases
(bounded in entries) and the registry's loaded backbone templates. Not thread-safe on its
own: callers hold their lock.
"""

from __future__ import annotations

from collections import OrderedDict


def _one(value) -> int:
    return 1


class LRU:
    """``get`` refreshes an entry, ``put`` adds one and evicts the least recently used
    until the total ``sizeof`` is at most ``limit``; an entry larger than ``limit`` is
    not stored. ``evictions`` counts the entries dropped."""

    def __init__(self, limit: int, sizeof=_one):
        self.limit, self.sizeof = limit, sizeof
        self.data: OrderedDict = OrderedDict()
        self.size = 0
        self.evictions = 0

    def __len__(self) -> int:
        return len(self.data)

    def __contains__(self, key) -> bool:
        return key in self.data

    def get(self, key, default=None):
        if key not in self.data:
            return default
        self.data.move_to_end(key)
        return self.data[key]

    def put(self, key, value) -> None:
        if key in self.data:
            self.size -= self.sizeof(self.data.pop(key))
        size = self.sizeof(value)
        if size > self.limit:
            return
        self.data[key] = value
        self.size += size
        self.trim()

    def trim(self) -> None:
        while self.size > self.limit and self.data:
            _, old = self.data.popitem(last=False)
            self.size -= self.sizeof(old)
            self.evictions += 1

    def clear(self) -> None:
        self.data.clear()
        self.size = 0
