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
JOBS ?= 2
TABLE ?= all
DRY_RUN ?=
LIST ?=
ARGS ?=
# results folder of both: reproduce-table writes RESULTS/runs and RESULTS/<TABLE>, sweep-eps RESULTS/sweeps/<TASK>
RESULTS ?= results
# launcher: empty = each target's default (sweep-eps: population; reproduce-table: JOBS joblib processes);
# basic, joblib, population, local (submitit on this machine) or slurm
LAUNCHER ?=
# slurm (and local) launcher: partition, GPUs of each job, each job's time limit in minutes
PARTITION ?=
GPUS_PER_JOB ?=
TIME_LIMIT ?=
SWEEP_DIR = $(RESULTS)/sweeps/$(TASK)
RESULTS_DIR_IN_ARGS = error: ARGS sets results_dir; set RESULTS=<folder> instead (sweep-eps trains into \
	RESULTS/sweeps/<TASK>/runs and writes the analysis next to them)

.PHONY: help setup test test-all check-install demo demo-full demo-lm reproduce-table sweep-eps tune tune-demo bench gpu-check gpu-wheels lint format wandb-sync clean

help:
	@echo "make demo             every demo task, 147 runs at CPU scale (no downloads), 4.7 min measured on an idle 2-core machine -> results/demo/"
	@echo "make demo-full        the demo's full grid at the tasks' own training, 174 runs, ~24 min -> results/demo_full/"
	@echo "make demo-lm          GPT-style pretraining at CPU size: the 2x2 corners on pydoc tokens (5.6 min measured, loaded 2 cores) -> results/demo_lm/"
	@echo "make test             the test suite (installs everything first)"
	@echo "make reproduce-table  TABLE=<name> [RESULTS=...] [LAUNCHER=slurm PARTITION=...] paper-scale sweep + analysis; LIST=1 lists tables"
	@echo "make sweep-eps        TASK=... OPTIMIZERS=... EPS=... SEEDS=... [RESULTS=...] an eps sweep + its analysis"
	@echo "make tune             TASK=<space> BUDGET=<trials per arm> [SEEDS=...] equal tuning budgets (configs/tune/<space>.yaml;"
	@echo "                      TASK=digits_ablation | textlm_lstm1): optuna trials on validation, seeded reruns, TUNE.md"
	@echo "make tune-demo        digits, 4 ablation corners x 8 trials, best rerun with 3 seeds -> results/tune/demo"
	@echo "                      (measured: 11 min wall under heavy load = 171 s CPU on 1 thread; README \"Equal tuning budgets\")"
	@echo "make bench            optimizer, training-throughput and population benchmarks -> results/bench/"
	@echo "make gpu-check        OUT=... every CUDA path in <= 8 min on one GPU, JSON in OUT (results/bench/gpu)"
	@echo "make gpu-wheels       the wheels the GPU machine's image lacks -> .gpu-wheels/ (carry it to run gpu_check.sh there)"
	@echo "make check-install    pip install . (not editable) into a scratch venv, train toy2d from elsewhere"
	@echo "make published-curves REF=<AdaBelief-Optimizer checkout> [COMMIT=sha] rebuild results/published_curves.csv.gz"
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

# GPT-style pretraining at CPU size (lm_pretrain_tiny, README "LM pretraining"): the four ablation corners
# with the per-kind diagnostics, then the analysis: 5 min 36 s measured on a 2-core machine shared with other jobs.
demo-lm: setup
	$(BIN)/python -m optrepro.train -m task=lm_pretrain_tiny \
		optimizer=ablation_adam,ablation_eadam,ablation_belief_outside,ablation_belief_inside \
		diagnostics.enabled=true results_dir=results/demo_lm/runs progress=false
	$(BIN)/python -m optrepro.analyze --runs results/demo_lm/runs --out results/demo_lm

demo-full: setup
	$(BIN)/python -m optrepro.demo --full --jobs $(JOBS)

reproduce-table: setup
	$(BIN)/python -m optrepro.reproduce --table $(TABLE) --seeds $(SEEDS) --jobs $(JOBS) --results $(RESULTS) \
		$(if $(LAUNCHER),--launcher $(LAUNCHER)) $(if $(PARTITION),--partition $(PARTITION)) \
		$(if $(GPUS_PER_JOB),--gpus-per-job $(GPUS_PER_JOB)) $(if $(TIME_LIMIT),--time-limit $(TIME_LIMIT)) \
		$(if $(filter 1,$(DRY_RUN)),--dry-run) $(if $(filter 1,$(LIST)),--list) $(ARGS)

sweep-eps: setup
	$(if $(findstring results_dir=,$(ARGS)),$(error $(RESULTS_DIR_IN_ARGS)))
	$(BIN)/python -m optrepro.train -m task=$(TASK) optimizer=$(OPTIMIZERS) optimizer.eps=$(EPS) seed=$(SEEDS) \
		hydra/launcher=$(or $(LAUNCHER),population) $(if $(filter joblib,$(LAUNCHER)),hydra.launcher.n_jobs=$(JOBS)) \
		$(if $(PARTITION),hydra.launcher.partition=$(PARTITION)) \
		$(if $(GPUS_PER_JOB),hydra.launcher.gpus_per_node=$(GPUS_PER_JOB)) \
		$(if $(TIME_LIMIT),hydra.launcher.timeout_min=$(TIME_LIMIT)) \
		results_dir=$(SWEEP_DIR)/runs progress=false $(ARGS)
	$(BIN)/python -m optrepro.analyze --runs $(SWEEP_DIR)/runs --out $(SWEEP_DIR)

# tune: TASK names a tuning space (configs/tune/<TASK>.yaml); BUDGET and SEEDS default to the space's
BUDGET ?=
tune: setup
	$(BIN)/python -m optrepro.tune --space $(TASK) $(if $(BUDGET),--budget $(BUDGET)) \
		$(if $(filter command line,$(origin SEEDS)),--seeds $(SEEDS)) --jobs $(if $(filter command line,$(origin JOBS)),$(JOBS),1) \
		$(if $(LAUNCHER),--launcher $(LAUNCHER)) --results $(RESULTS)/tune/$(TASK) $(ARGS)

tune-demo: setup
	$(BIN)/python -m optrepro.tune --space digits_ablation --budget 8 --seeds 0,1,2 --results $(RESULTS)/tune/demo $(ARGS)

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

# the AdaBelief authors' per-epoch curves as data (README, Speed): REF = a checkout of their repo
REF ?=
COMMIT ?=

.PHONY: published-curves
published-curves: setup
	$(if $(REF),,$(error set REF=<a checkout of juntang-zhuang/Adabelief-Optimizer>))
	$(BIN)/python scripts/published_curves.py --ref $(REF) $(if $(COMMIT),--commit $(COMMIT))
