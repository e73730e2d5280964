"""iotcrm core: plain Python, no Faust import.

Subpackages: ``rules`` (the rule DSL), ``models`` (River online learning),
``quality`` (decode, validate, normalise, dedup), ``kafka`` and ``store``
(adapters to the servers), and the ``iotcrm`` command line in ``cli``.
"""
