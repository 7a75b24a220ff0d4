"""Benchmarks (``vla-bench``): each prints a table, writes ``--json`` and updates the docs."""
