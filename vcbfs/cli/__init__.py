"""The ``vcbfs`` command line: one module per verb group, dispatched from ``main``."""
