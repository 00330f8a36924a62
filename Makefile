# Two commands matter: `make run` and `make test`. Everything installs into .venv.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# reinstall when the package definition or the C kernels change
BUILD_INPUTS := pyproject.toml setup.py xaudit/metrics/_kernels.c
STAMP := $(VENV)/.stamp-$(shell cat $(BUILD_INPUTS) | sha256sum | cut -c1-16)

.PHONY: install extras run test bench clean

# Chromium for tests/test_browser.py (report.html in a headless browser): Debian's `chromium` through apt
# (about 25 s and 460 MB on a fresh Debian 12), as root only; without apt, root or network it prints a note and
# those tests are skipped. The image's apt lists usually suffice; `apt-get update` runs only when that fails.
APT_CHROMIUM := DEBIAN_FRONTEND=noninteractive apt-get install -y -q -o Acquire::Retries=1 \
	-o Acquire::http::Timeout=30 -o Acquire::https::Timeout=30 chromium

install: $(STAMP)
	@test -n "$$XAUDIT_CHROMIUM" || command -v chromium >/dev/null 2>&1 || \
	command -v chromium-browser >/dev/null 2>&1 || command -v google-chrome >/dev/null 2>&1 || \
	( test "$$(id -u)" = 0 && command -v apt-get >/dev/null 2>&1 && \
	  echo "installing chromium (apt-get) for tests/test_browser.py" && \
	  { $(APT_CHROMIUM) >/dev/null 2>&1 || { apt-get update -q -o Acquire::Retries=1 -o Acquire::http::Timeout=30 \
	    -o Acquire::https::Timeout=30 >/dev/null; $(APT_CHROMIUM) >/dev/null; }; } && command -v chromium >/dev/null ) || \
	echo "note: chromium is not installed (needs apt-get as root and the network); tests/test_browser.py will be skipped"

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
