# Entry points for the replication. Everything runs in the project venv (.venv),
# built from the exact pins in requirements.lock.
#
#   make replicate                      # whole workflow, CPU, default config
#   make replicate CORES=8 CONFIG=config/other.yaml
#   make replicate SNAKEMAKE_ARGS="--sdm conda"   # per-stage conda envs (envs/*.yaml)
#   make replicate SNAKEMAKE_ARGS="--forceall"    # any other snakemake flags
#   make calibrate                      # the calibration grid (config/calibration_grid.yaml): about 2.75 h on 2 cores
#   make verify                         # recompute sampled rows independently, check every sha256
#   make bundle                         # results-<model>-<commit>.tar.gz (+ .sha256) per model
#   make figures BUNDLE=results-m-c.tar.gz   # redraw figures, claims.md, report from a bundle (no torch)
#   make compare                        # results/ against the shipped reference/ run (RESULTS=, REFERENCE=)
#   make reference                      # copy a finished run's small tables into reference/
#   make reference-grid                 # after make calibrate: the grid's claims and recovery into reference-grid/
#   make docs-results                   # the results tables of README, docs/results.md (reference/) and docs/calibration-grid.md (reference-grid/)
#   make test PYTEST_ARGS="-k config"   # pytest, then `make lint`
#   make lint                           # snakemake --lint (0 findings), snakefmt --check, lint-imports (the wings' contracts)
#   make format                         # snakefmt: rewrite the Snakefile and workflow/rules/*.smk
#   make docs                           # the documentation site: docs/ into site/ (mkdocs --strict)
#   make test-cluster                   # live single-node SLURM (root, Debian): tests/cluster/
#   make venv PIP_ARGS="--extra-index-url https://download.pytorch.org/whl/cpu"
#                                       # CPU-only torch wheel on Linux (PyPI's is CUDA)

PYTHON ?= python3
CORES ?= 2
CONFIG ?= config/config.yaml
SNAKEMAKE_ARGS ?=
PYTEST_ARGS ?=
PIP_ARGS ?=
RESULTS ?= results
REFERENCE ?= reference
SUMMARY ?= $(REFERENCE)/summary.csv

VENV := .venv
STAMP := $(VENV)/.installed
# Rule scripts are started as `python ...` from PATH: make that the venv's python.
SNAKEMAKE := PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(VENV)/bin/snakemake
SMK_FLAGS = --configfile $(CONFIG) --cores $(CORES) $(SNAKEMAKE_ARGS)  # --cores last: targets may follow

.PHONY: venv config-check replicate calibrate reference-grid dryrun report test lint format docs test-cluster bench clean verify bundle \
	figures compare reference docs-results

$(STAMP): requirements.lock pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install $(PIP_ARGS) -r requirements.lock
	$(VENV)/bin/pip install --no-deps -e .
	touch $@

venv: $(STAMP)

# The config file, checked before Snakemake reads it: a bad file gets one line (its name, the
# key or the YAML line) instead of a traceback.
config-check: venv
	@$(VENV)/bin/python -m harmmed.config $(CONFIG)

replicate: config-check
	$(SNAKEMAKE) $(SMK_FLAGS)

# The grid of plants every claim statistic is calibrated on; the default models are among them.
calibrate:
	$(MAKE) replicate CONFIG=config/calibration_grid.yaml

dryrun: config-check
	$(SNAKEMAKE) $(SMK_FLAGS) --dry-run

report: config-check
	$(SNAKEMAKE) $(SMK_FLAGS) --report report.html

# Verification never reruns a stage, provenance included: it checks what results/ holds against
# the provenance.json the run wrote, and recomputes sampled rows.
verify: config-check
	$(SNAKEMAKE) $(SMK_FLAGS) --allowed-rules verify verify_all -- verify_all

bundle: config-check
	$(SNAKEMAKE) $(SMK_FLAGS) bundle_all

# figures, compare, reference and docs-results need only pandas (figures: matplotlib): no torch,
# no model, no GPU; they use the venv's python when there is one.
TABLES_PYTHON = PYTHONPATH=$(CURDIR)/src $(if $(wildcard $(VENV)/bin/python),$(VENV)/bin/python,$(PYTHON))

figures:
	@test -n "$(BUNDLE)" || { echo "usage: make figures BUNDLE=results-<model>-<commit>.tar.gz"; exit 2; }
	$(TABLES_PYTHON) $(CURDIR)/workflow/scripts/redraw.py $(BUNDLE) $(OUT)

# Exit status 1 when a verdict, a token id or a downloaded model's digest differs, or a file is
# missing; numbers outside tolerance and a fine-tune's weights are reported (docs/verification.md).
compare:
	$(TABLES_PYTHON) -m harmmed.review.compare $(RESULTS) $(REFERENCE)

reference:
	$(TABLES_PYTHON) -m harmmed.review.compare --write-reference --config $(CONFIG) $(RESULTS) $(REFERENCE)
	@mkdir -p docs/img && cp figures/calibration.png docs/img/calibration.png  # the README's headline figure

# The calibration grid's record (after make calibrate): each model's claims, recovery and
# digests, the calibration and the summary; docs/calibration-grid.md is written from it.
reference-grid:
	$(TABLES_PYTHON) -m harmmed.review.compare --write-reference --grid --config config/calibration_grid.yaml \
	  $(RESULTS) reference-grid
	@mkdir -p docs/img && cp figures/calibration.png docs/img/calibration-grid.png  # the grid page's figure

docs-results:
	$(TABLES_PYTHON) -m harmmed.review.docs_results $(SUMMARY)

test: venv
	$(VENV)/bin/python -m pytest -q $(PYTEST_ARGS)
	$(MAKE) lint

# The lint must report nothing: snakemake prints "Congratulations" only then.
lint: venv
	@out=$$(PYTHONPATH=$(CURDIR)/src $(SNAKEMAKE) --lint --cores 1 2>&1); status=$$?; echo "$$out"; \
	  test $$status -eq 0 && echo "$$out" | grep -q "Congratulations, your workflow is in a good condition"
	$(VENV)/bin/snakefmt --check Snakefile workflow/
	cd $(CURDIR) && $(VENV)/bin/lint-imports

format: venv
	$(VENV)/bin/snakefmt Snakefile workflow/

# The documentation site (mkdocs.yml: mkdocs-material over docs/), written to site/. --strict makes
# every warning fatal: a broken link or anchor, or a page left out of the nav.
docs: venv
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site

# Brings up SLURM on this machine (apt-get install when missing), installs the pinned plugin
# (requirements-cluster.lock) into the venv, runs the tiny workflow locally and through SLURM.
test-cluster: venv
	bash tests/cluster/test_cluster.sh

bench: venv
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(VENV)/bin/python bench/run_bench.py

# Generated outputs only; downloaded data (data/raw, data/models) and .snakemake/ stay.
clean:
	rm -rf results/ logs/ benchmarks/ figures/ site/ report.html results-*.tar.gz results-*.tar.gz.sha256
