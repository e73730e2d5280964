"""iotcrm's engine, in three layers that point one way (pyproject.toml's
import-linter contracts):

- the core, plain Python without Faust, Kafka or Cassandra: ``events``,
  ``config``, ``quality`` (decode, validate, normalise, dedup), ``rules``
  (the rule DSL), ``models`` (River online learning), ``actor``, ...;
- the adapters to the servers: ``kafka`` and ``store`` (with the Faust app,
  agents and tables outside this package, in ``agents`` and ``tables``);
- the ``iotcrm`` command line, ``cli``: the one composition root.
"""
