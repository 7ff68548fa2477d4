"""Benchmarks for langchain-persona-judge (speed and preference adherence); not part of the installed package.

Run the scripts from the repository root, as modules: ``python -m benchmarks.speed``, ``python -m
benchmarks.quality``, ``python -m benchmarks.plots``, or all of them with ``make bench``. See benchmarks/README.md.
"""
