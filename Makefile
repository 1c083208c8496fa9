# `make test` and `make demo` work from a clean clone: they create .venv if it is absent and
# install the project into it (editable, with the dev extra) before running.
VENV ?= .venv
PYTHON := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed

.PHONY: install test lint demo tiny-models clean

$(INSTALLED): setup.cfg pyproject.toml
	test -x $(PYTHON) || python3 -m venv $(VENV)
	# torch and torchvision first, pinned: this machine serves exactly these CPU-capable builds.
	$(PYTHON) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PYTHON) -m pip install --quiet -e '.[dev]'
	touch $(INSTALLED)

install: $(INSTALLED)

lint: install
	$(VENV)/bin/ruff check .

test: lint
	$(VENV)/bin/pytest

demo: install
	$(PYTHON) scripts/demo.py

tiny-models: install
	$(PYTHON) scripts/make_tiny_models.py --output-dir outputs/tiny_models

clean:
	rm -rf outputs .pytest_cache .ruff_cache
