"""Benchmarks of vcbfs against independent readers, run side by side on one machine.

    scripts/bench disk [--size-mib N] [--repeat N] [--only KIND[,KIND]]
    scripts/bench ntfs [--repeat N] [--only big,walk] [--profile]   (see ``ntfs --help``)
    scripts/bench mount [--repeat N] [--only open,big,holes,tar,find] [--profile]
    scripts/bench vsphere [--size-mib N] [--repeat N]
    scripts/bench requests [--repeat N] [--count N]
    scripts/bench compressed [--repeat N]
    scripts/bench tables FILE.json [FILE.json ...]

Every benchmark also takes ``--json FILE``: the run's figures (machine, date, each row's tool,
seconds, MB/s, ratios, target and verdict) as JSON, from which ``tables`` prints the README's
markdown tables (several runs of one benchmark make one table of ranges).

The package: ``harness`` (running, timing from a cold page cache, cached inputs, the printed
header and tables, the JSON document, markdown helpers); one module per benchmark (``disk``,
``ntfs``, ``mount``, ``vsphere``, ``requests``, ``compressed``), each with ``register(verbs)``
adding its subcommand, ``run_bench(args)`` running it and ``markdown(docs)`` making its README
table; ``cli`` (the parser, ``tables``); ``programs/``, what some benchmarks run in a process
of their own.  The fixture builders stay in tests/ and are imported from there.
``scripts/bench`` runs it (``python scripts/benchmarks``); from scripts/, ``python -m
benchmarks`` does the same.
"""
