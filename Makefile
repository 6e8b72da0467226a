# One target per stage of the InstructGPT recipe. RECIPE names a folder of YAML configs.
#   make all                         # the whole default job (offline, CPU, built-in task)
#   make sft RECIPE=recipes/qwen2.5-0.5b-hh ACCELERATE_CONFIG=recipes/accelerate/multi_gpu.yaml NUM_PROCESSES=8
#   make sft ARGS="--learning_rate 1e-4"   # any config field can be overridden on the command line
#   make all SEED=1                  # every stage's seed set to 1, the run in runs/tiny-seed1/
#   make compare                     # make all's stages, then GRPO, RLOO and DPO (TRL), then one leaderboard
#   make rounds ROUNDS=2             # collect K answers from our policy, rank, retrain the reward model, PPO again
#   make label ROUND=1 RATER=alice   # rank a round's answers in the browser (prints the page's URL)

RECIPE ?= recipes/tiny
ARGS ?=
PYTHON ?= python3
VENV ?= .venv
# The CPU build of torch, installed before anything else so no dependency pulls a multi-GB CUDA build.
# GPU users: make setup TORCH_SPEC="torch==2.13.0" on a CUDA machine gets the CUDA build from PyPI.
TORCH_SPEC ?= torch==2.13.0
ACCELERATE_CONFIG ?=
NUM_PROCESSES ?=

# make all SEED=N: every stage's seed set to N, the run in runs/<recipe>-seedN/ (RUN_NAME to choose the name; RUN_NAME
# alone runs the recipe as it is into runs/<RUN_NAME>/).
# PRECISION=bf16 (or fp32): every stage whose recipe states `bf16:` and `dtype:` trains in that precision (bf16:
# bfloat16 weights and autocast, fp32 log-probs, values and scores; README "Precision"), the run in
# runs/<recipe>[-seedN]-bf16/. The recipe so changed is written to runs/<name>/recipe/ first: the run can be
# repeated from it.
SEED ?=
PRECISION ?=
ifneq ($(filter-out bf16 fp32,$(PRECISION)),)
$(error PRECISION=$(PRECISION): use bf16 or fp32)
endif
PRECISION_EDITS = $(if $(filter bf16,$(PRECISION)),-e 's/^bf16:[^\#]*/bf16: true /' -e 's/^dtype:[^\#]*/dtype: bfloat16 /') \
	$(if $(filter fp32,$(PRECISION)),-e 's/^bf16:[^\#]*/bf16: false /' -e 's/^dtype:[^\#]*/dtype: float32 /')
ifneq ($(SEED)$(PRECISION)$(RUN_NAME),)
RUN_NAME ?= $(notdir $(RECIPE))$(if $(SEED),-seed$(SEED))$(if $(PRECISION),-$(PRECISION))
SEEDED_RECIPE := runs/$(RUN_NAME)/recipe
$(shell mkdir -p $(SEEDED_RECIPE) && for f in $(RECIPE)/*.yaml; do sed -E -e 's#runs/$(notdir $(RECIPE))(/|$$|[[:space:]])#runs/$(RUN_NAME)\1#g' $(if $(SEED),-e 's/^seed:.*/seed: $(SEED)/') $(PRECISION_EDITS) $$f > $(SEEDED_RECIPE)/$$(basename $$f); done)
override RECIPE := $(SEEDED_RECIPE)
endif

BIN := $(VENV)/bin
PY := $(BIN)/python
STAMP := $(VENV)/.installed

# A recipe that needs no network says so in its data.yaml, `offline: true` (local files, a base model built by
# `make base`: recipes/tiny, recipes/custom-example); real recipes need the Hub. OFFLINE=0 or 1 overrides it.
OFFLINE ?= $(shell grep -Eiqs '^offline:[[:space:]]*(true|yes|on)([[:space:]]|$$)' $(RECIPE)/data.yaml && echo 1 || echo 0)
export HF_HUB_DISABLE_TELEMETRY := 1
export TOKENIZERS_PARALLELISM := false
ifeq ($(OFFLINE),1)
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
endif

# `accelerate launch` when a config is given, plain python otherwise; the stage scripts run unchanged under both.
ifneq ($(ACCELERATE_CONFIG),)
LAUNCH := $(BIN)/accelerate launch --config_file $(ACCELERATE_CONFIG) $(if $(NUM_PROCESSES),--num_processes $(NUM_PROCESSES)) -m
else
LAUNCH := $(PY) -m
endif

.PHONY: all compare setup test test-kernels test-fast lint format data base sft reward ppo grpo rloo dpo eval push \
	collect rank label rounds push-data bench clean help

help:
	@sed -n '1,6p' Makefile

all: data base sft reward ppo eval

# Stage 3's alternatives through TRL's own trainers, from the same SFT model, reward model and prompts, evaluated
# together with SFT and PPO on the same held-out prompts (the report's leaderboard). After `make all`, the
# alternatives alone: make grpo rloo dpo eval.
compare: data base sft reward ppo grpo rloo dpo eval

# DeepSpeed is installed with the dev tools: the tests run ZeRO-2/3 for real on CPU processes.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev,deepspeed,trackers,ui]"
	touch $(STAMP)

setup: $(STAMP)

# The learning tests run a second time under PyTorch's portable kernels (ATEN_CPU_CAPABILITY=default) when this
# machine's own are vectorised: another machine's arithmetic, so a threshold that holds on one kernel set only
# fails here instead of on a newcomer's machine. `make test-kernels` runs the whole matrix (BENCHMARKS.md).
TEST_ENV = CI=$${CI:-1} HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
test: setup
	$(TEST_ENV) $(BIN)/pytest tests $(PYTEST_ARGS)
	@if [ "$$($(PY) -c 'import torch; print(torch.backends.cpu.get_cpu_capability())')" != DEFAULT ]; then \
	  echo "--- the learning tests again under ATEN_CPU_CAPABILITY=default ---"; \
	  $(TEST_ENV) ATEN_CPU_CAPABILITY=default $(BIN)/pytest tests -m learning $(PYTEST_ARGS); \
	fi

# Learning tests under every kernel set the CPU has x seeds 0-2 (x threads with ARGS="--threads 1 2").
test-kernels: setup
	$(PY) -m tests.benchmarks.bench_learning $(ARGS)

test-fast: setup
	HF_HUB_OFFLINE=1 $(BIN)/pytest tests -m "not slow and not multiprocess" $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check pipeline data_prep tests
	$(BIN)/ruff format --check pipeline data_prep tests

format: setup
	$(BIN)/ruff check --fix pipeline data_prep tests
	$(BIN)/ruff format pipeline data_prep tests

data: setup
	$(PY) -m data_prep build --config $(RECIPE)/data.yaml $(ARGS)

# Any recipe with a base.yaml: a tokenizer and a tiny model pretrained on the recipe's own train texts (its
# data.yaml's pretrain/; the built-in task's own corpus for recipes/tiny).
base: setup
	@if [ -f $(RECIPE)/base.yaml ]; then $(PY) -m pipeline.base --config $(RECIPE)/base.yaml $(ARGS); \
	else echo "$(RECIPE) has no base.yaml: it starts from a pretrained hub model, nothing to build."; fi

sft: setup
	$(LAUNCH) pipeline.sft --config $(RECIPE)/sft.yaml $(ARGS)

reward: setup
	$(LAUNCH) pipeline.reward --config $(RECIPE)/reward.yaml $(ARGS)

ppo: setup
	$(LAUNCH) pipeline.ppo --config $(RECIPE)/ppo.yaml $(ARGS)

grpo: setup
	$(LAUNCH) pipeline.grpo --config $(RECIPE)/grpo.yaml $(ARGS)

rloo: setup
	$(LAUNCH) pipeline.rloo --config $(RECIPE)/rloo.yaml $(ARGS)

dpo: setup
	$(LAUNCH) pipeline.dpo --config $(RECIPE)/dpo.yaml $(ARGS)

eval: setup
	$(LAUNCH) pipeline.evaluate --config $(RECIPE)/eval.yaml $(ARGS)

# The seeds' step 2, repeated (README, "Collecting comparisons from your model"): `make rounds ROUNDS=N` builds what
# round 1 needs when it is missing (data, base, SFT), then per round collect -> rank -> reward -> PPO -> eval in
# runs/<name>/rounds/<n>/, skipping what is done (a killed loop goes on where it stopped). Step by step:
#   make collect ROUND=1; make rank ROUND=1 [FROM=rankings.jsonl]; make rounds ROUNDS=1
ROUND ?=
ROUNDS ?= 2
FROM ?=
ROUND_ARGS = --config $(RECIPE)/rounds.yaml $(if $(ROUND),--round $(ROUND))
collect: setup
	$(LAUNCH) pipeline.rounds.collect $(ROUND_ARGS) $(ARGS)

rank: setup
	$(PY) -m pipeline.rounds.rank $(ROUND_ARGS) $(if $(FROM),--from_file $(FROM)) $(ARGS)

# The labeling page (README, "Ranking in the browser"): one prompt and its K answers at a time; each ranking is in
# runs/<name>/rounds/<n>/labels/<rater>.jsonl the moment it is saved. Then `make rank ROUND=n` merges the raters,
# reports their agreement and lets the labeler (if the recipe has one) rank what nobody did.
PORT ?= 7860
HOST ?= 127.0.0.1
RATER ?=
label: setup
	$(PY) -m pipeline.rounds.label $(ROUND_ARGS) --host $(HOST) --port $(PORT) $(if $(RATER),--rater $(RATER)) $(ARGS)

# make push-data ROUND=n HUB_REPO=user/name: a round's comparisons and rankings as a Hub data set, with its card.
push-data: setup
	$(PY) -m pipeline.rounds.push_data $(ROUND_ARGS) $(if $(HUB_REPO),--repo_id $(HUB_REPO)) $(ARGS)

rounds: setup
	$(PY) -m pipeline.rounds --config $(RECIPE)/rounds.yaml --rounds $(ROUNDS) --launch "$(LAUNCH)" $(ARGS)

# make push STAGE=ppo RECIPE=... HUB_REPO=user/name [ARGS="--dry_run true"]
STAGE ?= ppo
push: setup
	$(PY) -m pipeline.push --config $(RECIPE)/push.yaml --stage $(STAGE) $(if $(HUB_REPO),--repo_id $(HUB_REPO)) $(ARGS)

bench: setup
	$(PY) -m tests.benchmarks.run_all

clean:
	rm -rf runs .pytest_cache .ruff_cache
