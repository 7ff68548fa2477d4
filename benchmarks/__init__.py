"""Benchmarks for langchain-persona-judge (speed and preference adherence); not part of the installed package.

Run the scripts from the repository root: ``python benchmarks/speed.py``, ``python benchmarks/quality.py``,
``python benchmarks/plots.py``, or all of them with ``make bench``. See benchmarks/README.md.
"""
