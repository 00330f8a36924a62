# Two commands matter: `make run` and `make test`. Everything installs into .venv.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# reinstall when the package definition or the C kernels change
BUILD_INPUTS := pyproject.toml setup.py xaudit/metrics/_kernels.c
STAMP := $(VENV)/.stamp-$(shell cat $(BUILD_INPUTS) | sha256sum | cut -c1-16)

.PHONY: install extras run test bench clean

install: $(STAMP)

$(STAMP): $(BUILD_INPUTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev,ray]'
	rm -f $(VENV)/.stamp-*
	touch $(STAMP)

# timm and torchvision (xaudit audit --model timm:NAME / torchvision:NAME) need torch 2.14.1 + torchvision
# 0.29.1: their wheels do not import beside the CPU torch 2.13.0 of .venv. A second venv holds them for the
# tests of those factories (about 1 minute and 6 GB); where it cannot be built, those tests are skipped.
EXTRAS := .venv-extras
EXTRAS_STAMP := $(EXTRAS)/.stamp-$(shell cat $(BUILD_INPUTS) | sha256sum | cut -c1-16)

extras: $(EXTRAS_STAMP)

$(EXTRAS_STAMP): $(BUILD_INPUTS)
	@( test -x $(EXTRAS)/bin/python || $(PYTHON) -m venv $(EXTRAS) ) && \
	$(EXTRAS)/bin/pip install -q --upgrade pip && \
	$(EXTRAS)/bin/pip install -q torch==2.14.1 torchvision==0.29.1 && \
	$(EXTRAS)/bin/pip install -q -e '.[timm]' && \
	rm -f $(EXTRAS)/.stamp-* && touch $@ || \
	echo "note: the timm/torchvision venv ($(EXTRAS)) could not be built; their tests will be skipped"

run: install
	$(VENV)/bin/xaudit run

test: install extras
	$(PY) -m pytest

bench: install
	@for b in bench/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) $(EXTRAS) runs
