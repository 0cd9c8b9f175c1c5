"""Which partition a customer's records belong to: Java's and aiokafka's default (murmur2).

Producers using librdkafka's default (CRC32-based) put some keys elsewhere; the worker detects
that and forwards the record once to the right partition, so per-customer state stays whole."""

from __future__ import annotations

from aiokafka.partitioner import murmur2


def partition_for(key: bytes, partitions: int) -> int:
    return (murmur2(key) & 0x7FFFFFFF) % partitions
