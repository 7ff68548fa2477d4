"""``python -m langchain_persona_judge.cli``: the ``persona-judge`` command."""

import sys

from .main import main

sys.exit(main())
