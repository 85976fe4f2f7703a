"""Where the relay puts each message, chosen before it is produced so that the message can say so.

The relay stamps every message with the partition it was produced to (``PARTITION_HEADER``). A copy of
the message found on another partition (a backup replayed with another partitioner, a mirror that does
not keep partitions) is then known for a copy: a per-key handler, whose positions are per partition,
would otherwise handle it a second time. To stamp the header the relay must know the partition before
``produce()``, so it chooses it itself, exactly as Kafka's Java producer and librdkafka's
``murmur2_random`` do: ``murmur2(key) & 0x7fffffff % partitions``. Keys land where they always landed.
"""

from __future__ import annotations

__all__ = ["KeyPartitioner", "murmur2"]

_SEED = 0x9747B28C
_M = 0x5BD1E995
_MASK = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """The 32-bit MurmurHash2 of ``data`` as Kafka computes it (unsigned)."""
    length = len(data)
    h = (_SEED ^ length) & _MASK
    whole = length & ~3
    for i in range(0, whole, 4):
        k = int.from_bytes(data[i : i + 4], "little")
        k = (k * _M) & _MASK
        k ^= k >> 24
        k = (k * _M) & _MASK
        h = ((h * _M) & _MASK) ^ k
    rest = length - whole
    if rest == 3:
        h ^= data[whole + 2] << 16
    if rest >= 2:
        h ^= data[whole + 1] << 8
    if rest >= 1:
        h ^= data[whole]
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    h ^= h >> 15
    return h


class KeyPartitioner:
    """A key's partition on a topic of ``count`` partitions; remembered per key, since streams repeat."""

    LIMIT = 100_000
    """Keys remembered at most (then forgotten all at once: hashing again is cheap, memory is not)."""

    def __init__(self) -> None:
        self._known: dict[tuple[bytes, int], int] = {}

    def partition(self, key: bytes, count: int) -> int:
        found = self._known.get((key, count))
        if found is None:
            if len(self._known) >= self.LIMIT:
                self._known.clear()
            found = self._known[(key, count)] = (murmur2(key) & 0x7FFFFFFF) % count
        return found
