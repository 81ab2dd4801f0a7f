# onnxopt developer commands. `make demo` and `make test` set everything up themselves.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PYTHONHASHSEED := 0

.PHONY: install test demo lint models bench case-study distill-demo search-demo fuzz realmodels clean help

help:
	@echo "make install     create .venv and install onnxopt with all extras"
	@echo "make test        run the test suite"
	@echo "make demo        optimize the bundled demo model (digits ResNet) and print the per-stage table"
	@echo "make lint        ruff + mypy"
	@echo "make models      rebuild models/ (sample models and data)"
	@echo "make bench       side-by-side benchmark ratios (benchmarks/run.py; ARGS=\"--only SECTION\")"
	@echo "make distill-demo  distillation on digits, both frameworks, 3 seeds"
	@echo "make search-demo   GA vs random search, and a digits search vs the baseline CNN"
	@echo "make case-study    the classic optimization case study, end to end"
	@echo "make fuzz N=5000   N damaged inputs through the CLI (SEED=0, JOBS=1); summary table"
	@echo "make realmodels    optimize/quantize/prune on real ONNX models from public packages (ARGS=\"--only NAME\")"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Re-install only when the project's dependency list changes.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[all,dev]"
	touch $(STAMP)

install: $(STAMP)

test: install
	$(BIN)/python -m pytest -q -x --timeout=600 -p no:cacheprovider tests

# The demo model is a 4.9 MB ResNet-style digits CNN: big enough for int8 to pay on a CPU without VNNI.
demo: install
	$(BIN)/onnxopt optimize models/digits_resnet.onnx -o build/digits_resnet.opt.onnx \
		--data models/digits_val.npz --calib-data models/digits_calib.npz

lint: install
	$(BIN)/ruff check onnxopt tests benchmarks scripts examples models
	$(BIN)/mypy

models: install
	$(BIN)/python scripts/build_models.py

bench: install
	$(BIN)/python benchmarks/run.py $(ARGS)

distill-demo: install
	$(BIN)/python benchmarks/distill_demo.py

search-demo: install
	$(BIN)/python benchmarks/search_demo.py

case-study: install
	$(BIN)/python examples/case_study.py --out build/case_study --readme README.md $(ARGS)

N ?= 1000
SEED ?= 0
JOBS ?= 1
fuzz: install
	$(BIN)/python -m scripts.fuzz -n $(N) --seed $(SEED) --jobs $(JOBS)

realmodels: install
	$(BIN)/python scripts/realmodels/run.py $(ARGS)

clean:
	rm -rf build .pytest_cache .mypy_cache .ruff_cache
