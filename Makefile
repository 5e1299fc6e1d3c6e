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
# One stamp per installed set of extras, named after them (dev-bench installs .[RUNTIME,dev,bench]).
STAMP := $(VENV)/.installed-$(RUNTIME)-dev-$(INSTALL_KEY)
BENCH_STAMP := $(VENV)/.installed-$(RUNTIME)-dev-bench-$(INSTALL_KEY)
COMMA := ,
OUT ?= out
SOURCES := $(OUT)/sources
FUSED := $(OUT)/fused
JOBS ?= 2

.PHONY: demo test test-fast fuzz data sources bench bench-quick clean

$(VENV)/.installed-$(RUNTIME)-%-$(INSTALL_KEY): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[$(RUNTIME),$(subst -,$(COMMA),$*)]'
	@find $(VENV) -maxdepth 1 -name '.installed-*' ! -name '.installed-$(RUNTIME)-*-$(INSTALL_KEY)' -delete
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

# The compile fuzz test with more examples than `make test` runs (200), on one process so that the statistics print.
FUZZ_EXAMPLES ?= 1000
fuzz: $(STAMP)
	AKFC_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(PY) -m pytest tests/fuzz -p no:xdist --hypothesis-show-statistics

# Benchmarks against the targets in docs/benchmarks.md: results and summary.md go to benchmarks/results/.
# `make bench` is sized for at most 45 minutes on 2 cores; QUICK=1 (or bench-quick) runs reduced sizes in a few minutes.
QUICK ?=
bench: sources $(BENCH_STAMP)
	$(PY) -m benchmarks.run $(if $(QUICK),--quick)

bench-quick:
	$(MAKE) bench QUICK=1

clean:
	rm -rf $(OUT)
