# Atoll: `make serve` runs it, `make test` tests it. Both install what is missing first.
# Run as root on Debian 12: sandboxes need namespaces, cgroups and nftables.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
LEAP0_VENV := .venv-leap0
STAMPS := .stamps
ATOLL := $(VENV)/bin/atoll

.PHONY: serve test setup host template templates lint fmt unasync bench fuzz clean
.DEFAULT_GOAL := help

help:
	@echo "make serve   install what is missing, build the default template, run Atoll on localhost"
	@echo "make test    install what is missing, build every system template, run the whole test suite"
	@echo "make templates  build every system template (the default one and the code interpreter)"
	@echo "make lint    ruff, mypy and the generated-sync-SDK check"
	@echo "make bench   run every benchmark in bench/ and write BENCHMARKS.md"
	@echo "make fuzz    fuzz the API from its OpenAPI document (ATOLL_FUZZ_EXAMPLES per operation)"

serve: setup template
	$(ATOLL) serve

# the suites that run again through a cluster: a node and an API replica on PostgreSQL
# (tests/_support/cluster.py, docs/cluster.md), every request placed and forwarded by the replica
CLUSTER_SUITES = tests/server/test_sandboxes_api.py tests/server/test_snapshots.py \
	tests/server/test_pty.py tests/server/test_filesystem.py tests/server/test_process.py tests/router

test: setup templates $(STAMPS)/leap0 lint
	$(VENV)/bin/pytest -q
	ATOLL_TEST_CLUSTER=1 ATOLL_TEST_DATABASE=postgresql $(VENV)/bin/pytest -q $(CLUSTER_SUITES)
	@# the whole suite again with gVisor as the server's backend, when it is installed (scripts/setup-gvisor.sh)
	if command -v runsc >/dev/null; then ATOLL_TEST_RUNTIME=runsc $(VENV)/bin/pytest -q; fi

setup: host $(STAMPS)/venv $(STAMPS)/dashboard

host:
	@bash scripts/setup-host.sh
	@bash scripts/setup-criu.sh
	@bash scripts/setup-gvisor.sh

$(STAMPS)/venv: pyproject.toml
	@mkdir -p $(STAMPS)
	[ -x $(VENV)/bin/python ] || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q -e ".[server,dev]"
	@touch $@

# the dashboard's front-end libraries (htmx, xterm.js, uPlot) from the npm registry, into the
# git-ignored atoll/dashboard/frontend/node_modules that the server serves; never committed
$(STAMPS)/dashboard: atoll/dashboard/frontend/package-lock.json
	@mkdir -p $(STAMPS)
	cd atoll/dashboard/frontend && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

$(STAMPS)/leap0: Makefile
	@mkdir -p $(STAMPS)
	[ -x $(LEAP0_VENV)/bin/python ] || "$$(bash scripts/find-python312.sh)" -m venv $(LEAP0_VENV)
	$(LEAP0_VENV)/bin/pip install -q "leap0==0.8.0"
	@# what is built on the SDK (tests/conformance/test_langchain_leap0.py, test_leap0_adk.py) and
	@# LangChain's standard sandbox suite; a second step so leap0's own pins are resolved first.
	@# langchain-tests 1.1.5 is the newest whose suite imports with deepagents<0.5 (langchain-leap0's pin)
	$(LEAP0_VENV)/bin/pip install -q "langchain-leap0==0.2.0" "deepagents==0.4.12" \
		"langchain-tests==1.1.5" "leap0-adk==0.1.0" "google-adk==2.13.0"
	@touch $@

# the default template; `make serve`'s server builds the others (code interpreter) in the background
template: setup
	$(ATOLL) template build

# every system template (cached: rebuilt only when its recipe or inputs changed)
templates: setup
	$(ATOLL) template build --all

lint: $(STAMPS)/venv
	$(VENV)/bin/ruff check atoll tests scripts bench
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports
	$(VENV)/bin/python scripts/unasync.py --check

fmt: $(STAMPS)/venv
	$(VENV)/bin/ruff format atoll tests scripts bench
	$(VENV)/bin/ruff check --fix atoll tests scripts bench

unasync: $(STAMPS)/venv
	$(VENV)/bin/python scripts/unasync.py

# the API fuzzer with many more cases per operation than `make test` runs (a few hundred in all)
fuzz: setup template
	ATOLL_FUZZ_EXAMPLES=$${ATOLL_FUZZ_EXAMPLES:-200} $(VENV)/bin/pytest -q tests/reliability/test_api_fuzz.py

bench: setup template
	@# sshd is only bench/dev_services.py's baseline: installed here, not by setup, so `make test`
	@# never adds an sshd to a CI host
	command -v /usr/sbin/sshd >/dev/null || scripts/install-bench-sshd.sh
	$(VENV)/bin/python bench/report.py

clean:
	rm -rf $(STAMPS) $(VENV) $(LEAP0_VENV)
