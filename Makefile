# foodnet: `make help` lists the targets. Everything runs inside .venv, created on first use.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
ARGS   ?=

.PHONY: help install demo train test lint tensorboard mlflow bench bench-gpu bench-serve clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

install: $(STAMP)  ## create .venv and install foodnet with its test and tool dependencies

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install -e ".[dev]"
	touch $(STAMP)

demo: install  ## transfer learning offline: EfficientNet-Lite0's ImageNet weights vs a random-init backbone, side by side
	$(PY) -m foodnet.data demo --out data/demo
	$(PY) -m foodnet.train -m experiment=demo model.weights=DEFAULT,null $(ARGS)

train: install  ## train on data/train.txt + data/test.txt; pass overrides as ARGS="..."
	$(PY) -m foodnet.train $(ARGS)

test: install  ## run the test suite
	$(PY) -m pytest $(ARGS)

lint: install  ## ruff, and the import contracts of pyproject.toml (imports run one way)
	$(VENV)/bin/ruff check src tests
	$(VENV)/bin/lint-imports --no-cache

tensorboard: install  ## serve every run under outputs/ and multirun/ on http://127.0.0.1:6006
	mkdir -p outputs multirun
	$(VENV)/bin/tensorboard --logdir_spec outputs:outputs,multirun:multirun --host 127.0.0.1 --port 6006 \
		--samples_per_plugin images=100  # keep a confusion matrix per epoch, not a sample of 10

mlflow: install  ## MLflow UI over outputs/mlflow.db (logger=mlflow) on http://127.0.0.1:5000
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///outputs/mlflow.db --host 127.0.0.1 --workers 1 --port 5000

bench: install  ## seed script vs foodnet vs cache_features, interleaved, 500 generated photos (about an hour on 2 CPU cores)
	$(PY) benchmarks/bench.py $(ARGS)

bench-gpu: install  ## the same on one CUDA GPU: bf16, channels_last, compile, workers, pinned memory (~5 min)
	$(PY) benchmarks/bench.py --device cuda --forward-budget 30 --extra-variant "workers0:data.num_workers=0" $(ARGS)

bench-serve: install  ## foodnet serve under load: 32 clients x 500 requests, dynamic batching vs batch size 1
	$(PY) benchmarks/bench_serve.py $(ARGS)

clean:  ## remove generated data, runs and caches (keeps .venv)
	rm -rf data/demo outputs multirun mlruns lightning_logs .pytest_cache .ruff_cache
	find . -name __pycache__ -not -path "./$(VENV)/*" -prune -exec rm -rf {} +
