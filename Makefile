# Lal — two commands for a fresh machine:
#   make lab    install the course into .venv and open it in JupyterLab
#   make test   install the course and its test tools, and run every test (unit tests, notebooks, exercises)

VENV ?= .venv
PYTHON := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
# Seconds one notebook cell may take before the tests call it hung. The longest cells (chapter 5's
# main run, chapter 7's fine-tuning) take about 2 minutes on a quiet 2-core machine and twice that
# on a busy or slower one: the limit leaves room for both, and still stops a real hang.
NOTEBOOK_TIMEOUT ?= 600
# TORCH=cpu installs PyTorch's CPU-only build (a 192 MB wheel, about 790 MB installed) instead of
# the default Linux build, which brings NVIDIA's CUDA libraries (about 3 GB to download): for a
# machine without an NVIDIA GPU. The default build uses a GPU when there is one.
TORCH ?= default
# Where TORCH=cpu takes torch from: PyTorch's own CPU index, or a mirror of it
# (make lab TORCH=cpu CPU_TORCH_INDEX=https://your-mirror/whl/cpu). It is checked first, in seconds.
CPU_TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
# JupyterLab serves the repository's root (chapters, exercises/ and solutions/, which the chapters
# link to) and opens chapter 1.
FIRST_CHAPTER := notebooks/01_next_token_prediction.ipynb
# The chapters whose training cells save runs for LAL_REUSE_RUNS=1 (`make runs`), in order:
# chapters 7 and 8 load the model chapter 5 saves.
TRAINING_CHAPTERS := $(sort $(shell grep -l train_or_reuse notebooks/[0-9][0-9]_*.ipynb))
# The mlx extra installs MLX on Linux (its CPU build) and macOS: there its tests must run, not skip.
REQUIRE_MLX := $(if $(filter Linux Darwin,$(shell uname -s 2>/dev/null)),1,0)
# On a Mac, make lab also installs MLX, the second backend chapter 8 shows (`--backend mlx`).
COMMA := ,
LAB_EXTRAS := notebooks$(if $(filter Darwin,$(shell uname -s 2>/dev/null)),$(COMMA)mlx)
# JupyterLab refuses to start as root (containers, cloud VMs) unless told that it is meant.
ALLOW_ROOT := $(if $(filter 0,$(shell id -u 2>/dev/null)),--allow-root)

.PHONY: help install install-test lab test test-browser unit notebooks-test exercises notebooks headers runs bench sft-demo clean

help:
	@echo "make lab        install the course (first time only) and open it in JupyterLab at chapter 1"
	@echo "                (add TORCH=cpu on a machine without an NVIDIA GPU: torch's 192 MB CPU wheel,"
	@echo "                about 790 MB installed, instead of about 3 GB of CUDA downloads)"
	@echo "make test       install the course and its test tools (about 200 MB more; first time only)"
	@echo "                and run all tests"
	@echo "make test-browser  JupyterLab in Chromium: run every widget notebook, turn its sliders,"
	@echo "                open a chapter's exercises from its link"
	@echo "make unit       unit tests of the lal package only"
	@echo "make exercises  regenerate exercises/ from solutions/"
	@echo "make notebooks  re-execute every chapter and solutions notebook in place"
	@echo "make runs       train every chapter's runs once into notebooks/runs/ (for LAL_REUSE_RUNS=1)"
	@echo "make headers    regenerate the Colab badge / setup cells of every notebook"
	@echo "make bench      throughput and time-to-loss benchmarks on this machine"
	@echo "make sft-demo   pretrain, fine-tune and score a chat model from scratch (runs/sft-demo)"

$(STAMP): pyproject.toml
	@echo "Installing the course into $(VENV) (a few minutes the first time; progress below)."
ifeq ($(TORCH),cpu)
	@python3 tools/check_torch_index.py $(CPU_TORCH_INDEX)
endif
	python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
ifeq ($(TORCH),cpu)
	$(PYTHON) -m pip install --progress-bar on torch --index-url $(CPU_TORCH_INDEX)
endif
	$(PYTHON) -m pip install --progress-bar on -e ".[$(LAB_EXTRAS)]"
	touch $(STAMP)

# What the tests need on top: pytest, nbval, hypothesis, transformers (about 200 MB on disk), and
# MLX (its CPU build on Linux), whose tests run wherever it installs.
$(TEST_STAMP): $(STAMP)
	$(PYTHON) -m pip install --progress-bar on -e ".[notebooks,test,mlx]"
	touch $(TEST_STAMP)

install: $(STAMP)

install-test: $(TEST_STAMP)

lab: install
	$(VENV)/bin/jupyter lab --ServerApp.root_dir=. $(FIRST_CHAPTER) $(ALLOW_ROOT)

test: install-test
	LAL_REQUIRE_MLX=$(REQUIRE_MLX) $(PYTHON) -m pytest tests notebooks solutions --nbval-lax --nbval-current-env \
		--nbval-cell-timeout=$(NOTEBOOK_TIMEOUT) --nbval-sanitize-with tests/nbval_sanitize.cfg -q

# Needs a Chromium from the system's package manager (apt-get install chromium) or LAL_CHROMIUM.
test-browser: install-test
	$(PYTHON) -m pip install --quiet -e ".[browser]"
	LAL_BROWSER_TESTS=1 $(PYTHON) -m pytest tests/browser -q

unit: install-test
	$(PYTHON) -m pytest tests -q

exercises: install
	$(PYTHON) tools/make_exercises.py

headers: install
	$(PYTHON) tools/notebook_cells.py

notebooks: install
	$(PYTHON) tools/execute_notebooks.py --timeout $(NOTEBOOK_TIMEOUT)
	$(PYTHON) tools/make_exercises.py

# Every training chapter executed once, top to bottom, so that its runs are saved in notebooks/runs/
# (the notebooks themselves are left as they are). With LAL_REUSE_RUNS=1 the chapters then load
# these runs instead of training. About 8 minutes on a quiet 2-core CPU (INSTRUCTORS.md).
runs: install
	@for notebook in $(TRAINING_CHAPTERS); do \
		echo "Training the runs of $$notebook"; \
		LAL_REUSE_RUNS= $(VENV)/bin/jupyter nbconvert --to notebook --execute --stdout --log-level=WARN \
			--ExecutePreprocessor.timeout=$(NOTEBOOK_TIMEOUT) $$notebook > /dev/null || exit 1; \
	done
	@echo "Saved in notebooks/runs/: copy that folder into notebooks/ of every machine of the room."

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
