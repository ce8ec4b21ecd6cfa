# optrepro — every target that runs code first makes sure the environment is installed (`setup`).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
OUT ?= results/bench/gpu

# sweep-eps / reproduce-table parameters (override on the command line)
TASK ?= toy2d
OPTIMIZERS ?= adam,eadam,adabelief
EPS ?= 1e-16,1e-12,1e-8,1e-6,1e-4
SEEDS ?= 0,1,2
LAUNCHER ?= population
JOBS ?= 2
TABLE ?= all
DRY_RUN ?=
ARGS ?=

.PHONY: help setup test test-all check-install demo reproduce-table sweep-eps bench gpu-check gpu-wheels lint format wandb-sync clean

help:
	@echo "make demo             the whole pipeline at CPU scale (no downloads), report in results/demo/"
	@echo "make test             the test suite (installs everything first)"
	@echo "make reproduce-table  TABLE=<name> paper-scale sweep + analysis (GPU, downloads data)"
	@echo "make sweep-eps        TASK=... OPTIMIZERS=... EPS=... SEEDS=... an eps sweep + its analysis"
	@echo "make bench            optimizer, training-throughput and population benchmarks -> results/bench/"
	@echo "make gpu-check        OUT=... every CUDA path in <= 8 min on one GPU, JSON in OUT (results/bench/gpu)"
	@echo "make gpu-wheels       the wheels the GPU machine's image lacks -> .gpu-wheels/ (carry it to run gpu_check.sh there)"
	@echo "make check-install    pip install . (not editable) into a scratch venv, train toy2d from elsewhere"
	@echo "make lint             ruff"
	@echo "make wandb-sync       upload offline wandb runs under results/"
	@echo "make clean            remove caches (never results/)"

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $(STAMP)

test: setup
	$(BIN)/python -m pytest -q -m "not slow and not gpu" $(PYTEST_ARGS)

test-all: setup
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

demo: setup
	$(BIN)/python -m optrepro.demo --jobs $(JOBS)

reproduce-table: setup
	$(BIN)/python -m optrepro.reproduce --table $(TABLE) --seeds $(SEEDS) --jobs $(JOBS) $(if $(filter 1,$(DRY_RUN)),--dry-run)

sweep-eps: setup
	$(BIN)/python -m optrepro.train -m task=$(TASK) optimizer=$(OPTIMIZERS) optimizer.eps=$(EPS) seed=$(SEEDS) \
		hydra/launcher=$(LAUNCHER) $(if $(filter joblib,$(LAUNCHER)),hydra.launcher.n_jobs=$(JOBS)) \
		results_dir=results/sweeps/$(TASK)/runs progress=false $(ARGS)
	$(BIN)/python -m optrepro.analyze --runs results/sweeps/$(TASK)/runs --out results/sweeps/$(TASK)

bench: setup
	$(BIN)/python scripts/bench_optim.py
	$(BIN)/python scripts/bench_optim.py --malloc default --out results/bench/optim_cpu_malloc_default.json
	$(BIN)/python scripts/bench_optim.py --malloc default --sets resnet34_cifar_training_loop \
		--rounds 15 --out results/bench/optim_cpu_training_loop.json
	$(BIN)/python scripts/bench_optim.py --diagnostics --rounds 20 --out results/bench/optim_cpu_diagnostics.json
	$(BIN)/python scripts/bench_train.py
	$(BIN)/python scripts/bench_population.py

gpu-check: setup
	OPTREPRO_PYTHON=$(abspath $(BIN))/python bash scripts/gpu_check.sh $(OUT)

# downloads: what scripts/gpu_check.sh installs on the lent GPU machine, which has no package index
gpu-wheels: setup
	$(BIN)/python scripts/gpu_wheels.py build --out .gpu-wheels

lint: setup
	$(BIN)/ruff check src tests scripts

format: setup
	$(BIN)/ruff format src tests scripts

wandb-sync: setup
	@found=$$(find results -path '*/wandb/offline-run-*' -maxdepth 6 -type d 2>/dev/null); \
	if [ -z "$$found" ]; then echo "no offline wandb runs under results/"; exit 0; fi; \
	$(BIN)/wandb sync $$found

clean:
	rm -rf .pytest_cache .ruff_cache build dist src/*.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

check-install: setup
	$(BIN)/python -m pytest -q -m slow tests/test_install.py
