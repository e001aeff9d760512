# The two set-up commands of the README: `make demo` and `make test`. Each creates .venv
# and installs what it needs; nothing else is needed on a fresh machine.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# A CPU build of torch: it is all the tests and the demo need, and a few hundred MB
# instead of several GB for a CUDA build. Override for a GPU machine: make TORCH_SPEC=torch
TORCH_SPEC ?= torch==2.13.0
STAMP  := $(VENV)/.installed
DEMO_OUT ?= demo-output
PYTEST_ARGS ?=
# `make test` runs in two pytest-xdist processes, a test file each at a time (its module
# fixtures built once): much of the suite waits on subprocesses and dask start-up, so two
# processes on two cores take about 17 minutes where one takes 24. TEST_WORKERS=0: one process.
TEST_WORKERS ?= 2

.PHONY: install demo test bench test-integration clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[test,torch]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/hepprep run --out $(DEMO_OUT)

test: $(STAMP)
	$(PY) -m pytest -m "not slow and not integration" -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

# The slow tests are the full forms of tests CI runs smaller (every fuzz case, every kill
# moment, the bigger samples): out of `make test`'s 15-minute budget, but still run.
bench: $(STAMP)
	$(PY) benchmarks/run_all.py
	$(PY) -m pytest -m "slow and not integration" $(PYTEST_ARGS)

# Integration tests start real services themselves (Slurm: tests/integration/start_slurm.sh
# installs the Debian packages, so it needs root); the Python side needs the cluster extra.
CLUSTER_STAMP := $(VENV)/.installed-cluster

$(CLUSTER_STAMP): $(STAMP)
	$(PY) -m pip install -q -e ".[test,torch,cluster,xrootd]"
	touch $(CLUSTER_STAMP)

test-integration: $(CLUSTER_STAMP)
	$(PY) -m pytest -m integration $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) $(DEMO_OUT) bench-output
