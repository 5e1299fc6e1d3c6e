# Set-up-included entry points: each target creates .venv when it is missing
# and (re)installs the project only when pyproject.toml or constraints.txt
# changed since the last install.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
AKFC := $(VENV)/bin/akfc
# The onnxruntime build: gpu when nvidia-smi lists a GPU, else cpu.
RUNTIME := $(shell nvidia-smi -L 2>/dev/null | grep -q '^GPU' && echo gpu || echo cpu)
INSTALL_KEY := $(shell cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)
STAMP := $(VENV)/.installed-$(RUNTIME)-$(INSTALL_KEY)
OUT ?= out
SOURCES := $(OUT)/sources
FUSED := $(OUT)/fused
JOBS ?= 2

.PHONY: demo test test-fast data sources clean

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[$(RUNTIME),dev]'
	@rm -f $(VENV)/.installed-*
	@touch $@

# Prepared data and source models are rebuilt only when their inputs change.
$(OUT)/%/schema.json: $(STAMP) models/adult/prepare.py data/adult/adult.data.csv.gz data/adult/adult.test.csv.gz
	$(PY) -m models.adult.prepare --config $* --out $(OUT)/$*

$(SOURCES)/adult/sources.json $(SOURCES)/adult4/sources.json &: $(OUT)/adult/schema.json $(OUT)/adult4/schema.json $(wildcard models/zoo/*.py) models/adult/build_sources.py
	$(PY) -m models.adult.build_sources --data $(OUT) --out $(SOURCES)

data: $(OUT)/adult/schema.json $(OUT)/adult4/schema.json

sources: $(SOURCES)/adult/sources.json

demo: sources
	@echo "== compile the 2-task set (income, marital) =="
	$(AKFC) compile \
	    income=$(SOURCES)/adult/income_dcn.onnx income=$(SOURCES)/adult/income_mlp_deep.onnx \
	    marital=$(SOURCES)/adult/marital_deepfm.onnx marital=$(SOURCES)/adult/marital_autoint.onnx \
	    --train $(OUT)/adult/train.parquet --valid $(OUT)/adult/valid.parquet --test $(OUT)/adult/test.parquet \
	    -o $(FUSED)/adult/fused.onnx --force
	$(AKFC) eval $(FUSED)/adult/fused.onnx --data $(OUT)/adult/test.parquet --sources $(SOURCES)/adult/*.onnx
	@echo "== compile the 4-task set (income, marital, hours, relationship) =="
	$(AKFC) compile \
	    income=$(SOURCES)/adult4/income_mlp_wide.onnx marital=$(SOURCES)/adult4/marital_dcn.onnx \
	    hours=$(SOURCES)/adult4/hours_mlp_deep.onnx hours=$(SOURCES)/adult4/hours_deepfm.onnx \
	    relationship=$(SOURCES)/adult4/relationship_autoint.onnx relationship=$(SOURCES)/adult4/relationship_mlp_wide.onnx \
	    --train $(OUT)/adult4/train.parquet --valid $(OUT)/adult4/valid.parquet --test $(OUT)/adult4/test.parquet \
	    -o $(FUSED)/adult4/fused.onnx --force
	$(AKFC) eval $(FUSED)/adult4/fused.onnx --data $(OUT)/adult4/test.parquet --sources $(SOURCES)/adult4/*.onnx

test: $(STAMP)
	$(PY) -m pytest -n $(JOBS) --dist loadgroup

test-fast: $(STAMP)
	$(PY) -m pytest -n $(JOBS) --dist loadgroup -m 'not slow'

clean:
	rm -rf $(OUT)
