# `make test` and `make demo` each do all the set-up on a fresh machine (Python 3.11, Linux x86_64):
# .venv is built from requirements/lock.txt (every package at an exact version, hash-checked), then
# the project itself is installed without touching its dependencies.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
LOCK := requirements/lock.txt
LOCK_TOOLS := .venv-lock
PIP_TOOLS_VERSION := 7.6.2

.PHONY: test demo bench install lock clean

$(STAMP): $(LOCK) pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else "make: the lock is for Python 3.11; set PYTHON=/path/to/python3.11")'
	$(PYTHON) -m venv --clear $(VENV)
	$(PY) -m pip install --require-hashes --no-deps -r $(LOCK)
	$(PY) -m pip install --no-deps --no-build-isolation -e .
	$(PY) -m pip check
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

demo: $(STAMP)
	PATH=$(abspath $(VENV))/bin:$$PATH bash scripts/demo.sh

bench: $(STAMP)
	PATH=$(abspath $(VENV))/bin:$$PATH bash scripts/bench.sh

# Re-resolve the whole tree (pyproject.toml ranges + requirements/lock.in pins) with pip-tools.
lock:
	$(PYTHON) -m venv $(LOCK_TOOLS)
	$(LOCK_TOOLS)/bin/python -m pip install --quiet 'pip-tools==$(PIP_TOOLS_VERSION)'
	$(LOCK_TOOLS)/bin/pip-compile --generate-hashes --allow-unsafe --strip-extras --extra test \
	    --no-emit-index-url --no-emit-find-links --output-file $(LOCK) pyproject.toml requirements/lock.in

clean:
	rm -rf demo runs bench/results
