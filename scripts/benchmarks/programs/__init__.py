"""Programs the benchmarks run in a process of their own, by path
(``python scripts/benchmarks/programs/NAME.py ARGS``): real modules, so that ruff checks them.

Each imports only vcbfs (or pyfuse3 and trio), never the harness: what it costs to start is
part of what some benchmarks time.
"""
