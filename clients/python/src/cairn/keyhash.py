"""The documented key hash (the schema's PARTITIONS AND KEY ROUTING): Kafka's murmur2."""

from __future__ import annotations

import struct

_SEED = 0x9747B28C
_M = 0x5BD1E995
_MASK = 0xFFFFFFFF


def murmur2(key: bytes) -> int:
    """32-bit MurmurHash2 of `key` with Kafka's seed, as an unsigned int."""
    length = len(key)
    h = (_SEED ^ length) & _MASK
    block_count = length // 4
    # One unpack for all blocks: the loop runs per 4 bytes on ints, never per byte.
    for k in struct.unpack_from(f"<{block_count}I", key):
        k = (k * _M) & _MASK
        k ^= k >> 24
        k = (k * _M) & _MASK
        h = (h * _M) & _MASK
        h ^= k
    tail = key[block_count * 4 :]
    if tail:
        h ^= int.from_bytes(tail, "little")
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    h ^= h >> 15
    return h


def partition_for_key(key: bytes, partition_count: int) -> int:
    """The partition a key routes to: (murmur2(key) & 0x7fffffff) % partition_count."""
    return (murmur2(key) & 0x7FFFFFFF) % partition_count
