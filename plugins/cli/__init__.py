"""The ``infgate`` command line (one module per command group)."""
