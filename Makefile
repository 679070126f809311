# `make test` and `make demo` each do all the set-up on a fresh machine (Python 3.11).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test demo bench install clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip >/dev/null
	$(PY) -m pip install -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

demo: $(STAMP)
	PATH=$(abspath $(VENV))/bin:$$PATH bash scripts/demo.sh

bench: $(STAMP)
	PATH=$(abspath $(VENV))/bin:$$PATH bash scripts/bench.sh

clean:
	rm -rf demo runs bench/results
