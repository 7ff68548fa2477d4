"""The chat app example: run it from the repository root with ``python -m examples.chat_app.server`` (or ``make chat``).

``examples`` itself stays a namespace package (no ``__init__.py``): the scripts beside this folder are run by path.
"""
