# Set-up-included entry points: each target creates .venv when it is missing
# and (re)installs the project only when pyproject.toml or constraints.txt
# changed since the last install.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The onnxruntime build: gpu when nvidia-smi lists a GPU, else cpu.
RUNTIME := $(shell nvidia-smi -L 2>/dev/null | grep -q '^GPU' && echo gpu || echo cpu)
INSTALL_KEY := $(shell cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)
STAMP := $(VENV)/.installed-$(RUNTIME)-$(INSTALL_KEY)
OUT ?= out
JOBS ?= 2

.PHONY: demo test test-fast sources data clean

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[$(RUNTIME),dev]'
	@rm -f $(VENV)/.installed-*
	@touch $@

data: $(STAMP)
	$(PY) -m models.adult.prepare --out $(OUT)/adult
	$(PY) -m models.adult.prepare --config adult4 --out $(OUT)/adult4

sources: data
	$(PY) -m models.adult.build_sources --data $(OUT) --out $(OUT)/sources

demo: sources

test: $(STAMP)
	$(PY) -m pytest -n $(JOBS) --dist loadgroup

test-fast: $(STAMP)
	$(PY) -m pytest -n $(JOBS) --dist loadgroup -m 'not slow'

clean:
	rm -rf $(OUT)
