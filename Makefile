# Two commands matter: `make run` and `make test`. Everything installs into .venv.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# reinstall when the package definition or the C kernels change
BUILD_INPUTS := pyproject.toml setup.py xaudit/metrics/_kernels.c
STAMP := $(VENV)/.stamp-$(shell cat $(BUILD_INPUTS) | sha256sum | cut -c1-16)

.PHONY: install run test bench clean

install: $(STAMP)

$(STAMP): $(BUILD_INPUTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	rm -f $(VENV)/.stamp-*
	touch $(STAMP)

run: install
	$(VENV)/bin/xaudit run

test: install
	$(PY) -m pytest

bench: install
	@for b in bench/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) runs
