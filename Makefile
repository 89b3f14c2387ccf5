PYTHON ?= python3
CACHE := .cache

.PHONY: help test test-all timeshift demo lint bench bench-instructions interop examples

help:   # the targets, with what each does
	@echo "make test                the tests (python -m unittest); optional components skip without them"
	@echo "make test-all            the tests on every Python 3.9-3.13"
	@echo "make timeshift           the tests with the clock moved by -1, +1 and +10 years"
	@echo "make lint                ruff and mypy --strict (installed into .cache/lint)"
	@echo "make demo                the demo on http://127.0.0.1:8000 (python bunway_session.py --port N)"
	@echo "make bench               the benchmark (bench/README.md); BENCH_STRICT=1 fails on a missed target"
	@echo "make bench-instructions  the same workloads in instructions per request (valgrind)"
	@echo "make interop             express-session and bunway_session side by side (needs node, npm)"
	@echo "make examples            the example apps under real servers, walked through login and logout"

# The README's test command.
test:
	$(PYTHON) -m unittest

# Every Python 3.9-3.13 (.ci/pythons finds them: pyenv's newest patch release, or the test
# environment .ci/run made under .cache/); a missing one is reported and fails the target.
test-all:
	@.ci/pythons | { status=0; while read -r v py; do \
	  if [ "$$py" = - ] || ! "$$py" -c 'import sys' 2>/dev/null; then \
	    echo "== Python $$v: MISSING, not tested"; status=1; continue; fi; \
	  echo "== Python $$v ($$py)"; "$$py" -m unittest || status=1; \
	done; exit $$status; }

# The suite with the clock moved by -1, +1 and +10 years: it passes on any date.
timeshift:
	$(PYTHON) .ci/timeshift.py --python $(PYTHON)

demo:
	$(PYTHON) bunway_session.py

# ruff and mypy --strict, from a virtual environment of their own in .cache/lint (pinned: a new
# release of either must not change what passes).
lint: $(CACHE)/lint/bin/mypy
	$(CACHE)/lint/bin/ruff check --target-version py39 .
	$(CACHE)/lint/bin/mypy --strict bunway_session.py

$(CACHE)/lint/bin/mypy: Makefile
	$(PYTHON) -m venv $(CACHE)/lint
	$(CACHE)/lint/bin/pip install --quiet --disable-pip-version-check ruff==0.17.6 mypy==2.4.1

# The benchmark, with what it compares against (Beaker; Starlette and starsessions for ASGI)
# in .cache/bench.
bench: $(CACHE)/bench/bin/python
	$(CACHE)/bench/bin/python bench/bench.py

# Instructions per request under valgrind (callgrind): comparisons that hold on a noisy machine.
bench-instructions: $(CACHE)/bench/bin/python
	$(CACHE)/bench/bin/python bench/instructions.py

$(CACHE)/bench/bin/python: Makefile   # (installed again when the list below changes)
	$(PYTHON) -m venv $(CACHE)/bench
	$(CACHE)/bench/bin/pip install --quiet --disable-pip-version-check beaker starlette itsdangerous starsessions redis \
	  "psycopg[binary]" psycopg-pool \
	  || echo "the comparisons could not be installed: the bench runs without them"

# express-session and bunway_session side by side on one secret and one store (needs node
# and npm; the Redis scenarios need redis-server and redis-py, and are skipped without them).
interop: interop/node_modules/.installed
	$(PYTHON) interop/run_interop.py

interop/node_modules/.installed: interop/package.json
	cd interop && npm install --no-package-lock --no-audit --no-fund --loglevel=error
	touch $@

# The example apps (Starlette, FastAPI, Litestar, Flask + Flask-Login, Quart, a Django project)
# under real servers, each walked through login, a protected page and logout; an example whose
# framework is missing is skipped. .ci/run gives it a Python with all of them.
examples:
	$(PYTHON) examples/run_examples.py
