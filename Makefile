# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
# torch is pinned to the CPU wheel so the install never pulls a multi-GB CUDA build.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install -q --disable-pip-version-check
TORCH := torch==2.13.0

.PHONY: demo test lint bench clean

$(VENV)/.core: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) $(TORCH)
	$(PIP) -e . $(TORCH)
	touch $@

$(VENV)/.test: $(VENV)/.core
	$(PIP) -e '.[test]' $(TORCH)
	touch $@

$(VENV)/.bench: $(VENV)/.test
	$(PIP) -e '.[bench]' $(TORCH)
	-$(PIP) jax jaxlib optax
	touch $@

demo: $(VENV)/.core
	$(VENV)/bin/diyopt demo

test: $(VENV)/.test
	$(PY) -m pytest -q

lint: $(VENV)/.test
	$(VENV)/bin/ruff check src tests benchmarks examples
	$(VENV)/bin/ruff format --check src tests benchmarks examples
	$(VENV)/bin/lint-imports

bench: $(VENV)/.bench
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) runs
