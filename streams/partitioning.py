"""Which partition a customer's records belong to: Java's and aiokafka's default (murmur2).

Producers using librdkafka's default (CRC32-based) put some keys elsewhere; the worker detects
that and forwards the record once to the right partition, so per-customer state stays whole."""

from __future__ import annotations

import random
from collections.abc import Sequence
from functools import lru_cache

from aiokafka.partitioner import murmur2

# Keys whose hash is remembered: the customers a worker has seen most recently. A worker hashes
# a customer's key for every input record (is it on its partition?) and, in the producer, for
# every output; aiokafka's murmur2 is pure Python and was ~3% of the worker's time.
KEY_HASH_CACHE = 1 << 17


@lru_cache(maxsize=KEY_HASH_CACHE)
def _key_hash(key: bytes) -> int:
    return int(murmur2(key)) & 0x7FFFFFFF


def key_hash(key: bytes) -> int:
    """murmur2 of the key, made positive, as Kafka's default partitioner uses it."""
    if type(key) is not bytes:  # bytearray, memoryview: not hashable, or not worth keeping
        return int(murmur2(bytes(key))) & 0x7FFFFFFF
    return _key_hash(key)


def partition_for(key: bytes, partitions: int) -> int:
    return key_hash(key) % partitions


def producer_partitioner(
    key: bytes | None, all_partitions: Sequence[int], available: Sequence[int]
) -> int:
    """aiokafka's DefaultPartitioner with the hash remembered (Faust's `producer_partitioner`)."""
    if key is None:
        return random.choice(available or all_partitions)
    return all_partitions[key_hash(key) % len(all_partitions)]
