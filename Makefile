# Lal — two commands for a fresh machine:
#   make lab    install everything into .venv and open the course in JupyterLab
#   make test   install everything and run every test (unit tests, notebooks, exercises)

VENV ?= .venv
PYTHON := $(VENV)/bin/python
STAMP := $(VENV)/.installed
NOTEBOOK_TIMEOUT ?= 300
# TORCH=cpu installs PyTorch's CPU-only build (about 200 MB instead of several GB of CUDA
# libraries): for a machine without an NVIDIA GPU. The default build uses a GPU when there is one.
TORCH ?= default
CPU_TORCH_INDEX := https://download.pytorch.org/whl/cpu
# The mlx extra installs MLX on Linux (its CPU build) and macOS: there its tests must run, not skip.
REQUIRE_MLX := $(if $(filter Linux Darwin,$(shell uname -s 2>/dev/null)),1,0)
# JupyterLab refuses to start as root (containers, cloud VMs) unless told that it is meant.
ALLOW_ROOT := $(if $(filter 0,$(shell id -u 2>/dev/null)),--allow-root)

.PHONY: help install lab test test-browser unit notebooks-test exercises notebooks headers bench sft-demo clean

help:
	@echo "make lab        install (first time only) and start JupyterLab in notebooks/"
	@echo "                (add TORCH=cpu on a machine without an NVIDIA GPU: a much smaller install)"
	@echo "make test       install (first time only) and run all tests"
	@echo "make test-browser  JupyterLab in Chromium: run every widget notebook, turn its sliders"
	@echo "make unit       unit tests of the lal package only"
	@echo "make exercises  regenerate exercises/ from solutions/"
	@echo "make notebooks  re-execute every chapter and solutions notebook in place"
	@echo "make headers    regenerate the Colab badge / setup cells of every notebook"
	@echo "make bench      throughput and time-to-loss benchmarks on this machine"
	@echo "make sft-demo   pretrain, fine-tune and score a chat model from scratch (runs/sft-demo)"

$(STAMP): pyproject.toml
	@echo "Installing the course into $(VENV) (a few minutes the first time; progress below)."
	python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
ifeq ($(TORCH),cpu)
	$(PYTHON) -m pip install --progress-bar on torch --index-url $(CPU_TORCH_INDEX)
endif
	$(PYTHON) -m pip install --progress-bar on -e ".[notebooks,test,mlx]"
	touch $(STAMP)

install: $(STAMP)

lab: install
	$(VENV)/bin/jupyter lab notebooks/ $(ALLOW_ROOT)

test: install
	LAL_REQUIRE_MLX=$(REQUIRE_MLX) $(PYTHON) -m pytest tests notebooks solutions --nbval-lax --nbval-current-env \
		--nbval-cell-timeout=$(NOTEBOOK_TIMEOUT) --nbval-sanitize-with tests/nbval_sanitize.cfg -q

# Needs a Chromium from the system's package manager (apt-get install chromium) or LAL_CHROMIUM.
test-browser: install
	$(PYTHON) -m pip install --quiet -e ".[browser]"
	LAL_BROWSER_TESTS=1 $(PYTHON) -m pytest tests/browser -q

unit: install
	$(PYTHON) -m pytest tests -q

exercises: install
	$(PYTHON) tools/make_exercises.py

headers: install
	$(PYTHON) tools/notebook_cells.py

notebooks: install
	$(PYTHON) tools/execute_notebooks.py --timeout $(NOTEBOOK_TIMEOUT)
	$(PYTHON) tools/make_exercises.py

bench: install
	$(VENV)/bin/lal bench
	$(PYTHON) benchmarks/time_to_loss.py

SFT_DEMO := runs/sft-demo

# The documented fine-tuning recipe from scratch, as a new user runs it (data/sft/README.md).
sft-demo: install
	rm -rf $(SFT_DEMO)
	$(VENV)/bin/lal train --preset char-tiny --out $(SFT_DEMO)/base --quiet
	$(VENV)/bin/lal sft --ckpt $(SFT_DEMO)/base --out $(SFT_DEMO)/chat --quiet
	$(VENV)/bin/lal eval --ckpt $(SFT_DEMO)/chat --data data/sft/instructions_heldout.jsonl

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
