# Two entry points install what is missing (virtualenv, pinned Python packages, Debian's
# Fashion-MNIST when run as root): `make demo` runs `vit-interp reproduce` into report/,
# `make test` runs the whole test suite.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.vit-interp-installed
FASHION_MNIST := /usr/share/datasets/fashion-mnist
PYTEST_ARGS ?=
DEMO_ARGS ?=

.PHONY: install data demo test test-fast docs benchmark clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --constraint constraints.txt --editable ".[test,docs]"
	touch $(STAMP)

# The embedded default dataset; Debian ships it as package dataset-fashion-mnist.
data:
	@if ls $(FASHION_MNIST)/*idx3-ubyte* >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist; \
	else \
		echo "warning: $(FASHION_MNIST) is missing; install it with: sudo apt-get install dataset-fashion-mnist" >&2; \
	fi

demo: install data
	$(VENV)/bin/vit-interp reproduce --out report $(DEMO_ARGS)

test: install data
	$(PY) -m pytest -n 2 $(PYTEST_ARGS)

test-fast: install
	$(PY) -m pytest -n 2 -m "not slow" $(PYTEST_ARGS)

docs: install
	$(VENV)/bin/mkdocs build --strict

benchmark: install
	$(PY) benchmarks/forward_overhead.py
	$(PY) benchmarks/head_pruning.py
	$(PY) benchmarks/sae_pipeline.py
	$(PY) benchmarks/steering_sweep.py

clean:
	rm -rf $(VENV) site .pytest_cache report
