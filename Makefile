# The two entry points of the README. Both create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# a range the CPU build 2.13.0 satisfies; installed first so nothing pulls a newer CUDA build
TORCH_SPEC ?= torch>=2.4,<2.14
RUN ?= runs/tiny
DATA_DIR ?=
PYTEST_ARGS ?=

.PHONY: reproduce test install notebooks clean-venv

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[dev]"
	# curvlinops without backpack-for-pytorch (unused here), whose torchvision pulls a newer torch
	$(BIN)/pip install -q --no-deps "curvlinops-for-pytorch>=3,<4"
	touch $@

install: $(VENV)/.installed

reproduce: install
	$(BIN)/interp-ext reproduce --out $(RUN) $(if $(DATA_DIR),--data-dir $(DATA_DIR),)

test: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# the tutorials executed top to bottom on runs/tutorial and saved with their outputs
notebooks: install
	$(BIN)/python demos/execute.py $(if $(DATA_DIR),--data-dir $(DATA_DIR),)

clean-venv:
	rm -rf $(VENV)
