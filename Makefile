# Entry points for the replication. Everything runs in the project venv (.venv),
# built from the exact pins in requirements.lock.
#
#   make replicate                      # whole workflow, CPU, default config
#   make replicate CORES=8 CONFIG=config/other.yaml
#   make replicate SNAKEMAKE_ARGS="--sdm conda"   # per-stage conda envs (envs/*.yaml)
#   make replicate SNAKEMAKE_ARGS="--forceall"    # any other snakemake flags
#   make test PYTEST_ARGS="-k config"
#   make venv PIP_ARGS="--extra-index-url https://download.pytorch.org/whl/cpu"
#                                       # CPU-only torch wheel on Linux (PyPI's is CUDA)

PYTHON ?= python3
CORES ?= 2
CONFIG ?= config/config.yaml
SNAKEMAKE_ARGS ?=
PYTEST_ARGS ?=
PIP_ARGS ?=

VENV := .venv
STAMP := $(VENV)/.installed
# Rule scripts are started as `python ...` from PATH: make that the venv's python.
SNAKEMAKE := PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(VENV)/bin/snakemake
SMK_FLAGS = --cores $(CORES) --configfile $(CONFIG) --rerun-triggers mtime $(SNAKEMAKE_ARGS)

.PHONY: venv replicate dryrun report test bench clean

$(STAMP): requirements.lock pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install $(PIP_ARGS) -r requirements.lock
	$(VENV)/bin/pip install --no-deps -e .
	touch $@

venv: $(STAMP)

replicate: venv
	$(SNAKEMAKE) $(SMK_FLAGS)

dryrun: venv
	$(SNAKEMAKE) $(SMK_FLAGS) --dry-run

report: venv
	$(SNAKEMAKE) $(SMK_FLAGS) --report report.html

test: venv
	$(VENV)/bin/python -m pytest -q $(PYTEST_ARGS)

bench: venv
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(VENV)/bin/python bench/run_bench.py

# Generated outputs only; downloaded data (data/raw, data/models) and .snakemake/ stay.
clean:
	rm -rf results/ logs/ benchmarks/ figures/*/ report.html
