# Two entry points for a fresh machine; each creates the virtual environment and installs first.
#   make train   - the demo: trains configs/demo_mnist.py on real MNIST digits on this machine's CPU
#                  (about 4 minutes), then zero-shot, retrieval and linear-probe evaluation
#   make test    - runs the whole test suite, the slow end-to-end tests included
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
WORKDIR ?= workdirs/demo_mnist

.PHONY: install train test clean

$(BIN)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements-dev.txt
	touch $@

install: $(BIN)/.installed

train: install
	$(BIN)/python -m superclip_jax.main --config configs/demo_mnist.py --workdir $(WORKDIR)

test: install
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) workdirs
