"""Cassandra as iotcrm's system of record (see docs/storage.md).

- :mod:`engine.store.migrations` versioned, idempotent schema migrations;
- :mod:`engine.store.rows` action / registry records ↔ rows (plain Python);
- :mod:`engine.store.cassandra` the async store adapter, ``CassandraStore``;
- :mod:`engine.store.sink` the durable Kafka → Cassandra sink, ``CassandraSink``;
- :mod:`engine.store.backoff` exponential backoff with jitter.

Nothing is imported here, so importing a plain-Python part never loads the
Cassandra driver or aiokafka.
"""
