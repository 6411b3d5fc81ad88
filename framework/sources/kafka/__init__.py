"""Kafka source: events in (`source`), per-key ordering, offsets, replies and dead letters out."""
