"""The ``boilermaker`` command line: workers, dead-letter tooling, graphs, results, emulator.

Each command group is a module of its own (``worker``, ``dlq``, ``graph``,
``results``, ``emulator``); :mod:`boilermaker.cli.main` lists them.
"""
