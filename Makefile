PYTHON ?= python3
VERSIONS ?= 3.9 3.10 3.11 3.12 3.13

.PHONY: test test-all demo lint bench interop

# The README's test command.
test:
	$(PYTHON) -m unittest

# Every Python 3.9-3.13 that pyenv or PATH provides; a missing one is reported and fails the target.
test-all:
	@status=0; root=$$(pyenv root 2>/dev/null); \
	for v in $(VERSIONS); do \
	  py=$$(ls -d "$$root"/versions/$$v.*/bin/python 2>/dev/null | tail -n 1); \
	  [ -n "$$py" ] || py=$$(command -v python$$v 2>/dev/null); \
	  if [ -z "$$py" ] || ! "$$py" -c 'import sys' 2>/dev/null; then \
	    echo "== Python $$v: MISSING, not tested"; status=1; continue; fi; \
	  echo "== Python $$v ($$py)"; "$$py" -m unittest || status=1; \
	done; exit $$status

demo:
	$(PYTHON) bunway_session.py

# ruff and mypy are tools, not dependencies: install them yourself (pip install ruff mypy).
lint:
	@if command -v ruff >/dev/null; then ruff check --target-version py39 .; else echo "ruff not installed: skipped"; fi
	@if $(PYTHON) -m mypy --version >/dev/null 2>&1; then $(PYTHON) -m mypy --strict bunway_session.py; else echo "mypy not installed: skipped"; fi

# The benchmark; Beaker, for the comparison, goes into a git-ignored virtual environment.
bench: bench/.venv/bin/python
	bench/.venv/bin/python bench/bench.py

bench/.venv/bin/python:
	$(PYTHON) -m venv bench/.venv
	bench/.venv/bin/pip install --quiet --disable-pip-version-check beaker || echo "Beaker could not be installed: the bench runs without it"

# express-session and bunway_session side by side on one secret and one store.
interop: interop/node_modules/.installed
	$(PYTHON) interop/run_interop.py

interop/node_modules/.installed: interop/package.json
	cd interop && npm install --no-package-lock --no-audit --no-fund --loglevel=error
	touch $@
