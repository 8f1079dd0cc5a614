# The README's two commands: `make demo` and `make test`. Both create .venv on first use.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.edgekit-installed

.PHONY: demo test test-all lint clean bench-env

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned: torch 2.13 breaks torchvision, which timm needs
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	# torch pinned again so the resolver cannot trade it down; [jetson] (cuda-python<13 for
	# JetPack's CUDA 12) is for the Jetson: next to this torch (CUDA 13 bindings) it would downgrade
	# torch. [dev] brings the gpiod bindings the tests use.
	$(BIN)/pip install -q -e '.[train,plc,dev]' torch==2.14.1 torchvision==0.29.1
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/edgekit demo --out demo-out

test: $(STAMP)
	$(BIN)/pytest -q; rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; exit 0; fi; exit $$rc

test-all: $(STAMP)
	$(BIN)/pytest -q -m "slow or not slow"

lint: $(STAMP)
	$(BIN)/ruff check edgekit tests

# benchmark-only: anomalib in its own venv, never a dependency of edgekit (benchmarks/README.md)
ANOMALIB_VENV ?= /work/anomalib-venv
bench-env:
	$(PY) -m venv $(ANOMALIB_VENV)
	$(ANOMALIB_VENV)/bin/pip install -q torch==2.14.1 torchvision==0.29.1
	$(ANOMALIB_VENV)/bin/pip install -q anomalib timm onnx onnxruntime

clean:
	rm -rf demo-out .pytest_cache
