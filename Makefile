# The README's two commands: `make demo` and `make test`. Both create/update .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test test-fast cluster-up cluster-demo cluster-logs cluster-down

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# The offline demo pipeline: prepare -> sweep -> evaluate -> report on generated data (~2-3 min, 2 CPUs).
demo: install
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" dvc repro pipelines/demo/dvc.yaml
	@echo "Browse the runs: $(VENV)/bin/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db  (then open http://127.0.0.1:5000/#/experiments?workflowType=machine_learning)"

test: install
	$(PY) -m pytest -q

# The inner loop: the unit tests, without those marked slow (Ray, DVC, the cluster; under ~3 min here).
test-fast: install
	$(PY) -m pytest -q -m "not slow"

# Cluster mode on this machine (README, "Run on a cluster"): a Ray head and an MLflow tracking server
# in the background (PIDs, logs and the tracking store in .cluster/), the demo sweep as a Ray job, its
# logs, and a stop of exactly what cluster-up started.
cluster-up: install
	$(PY) cli.py cluster up

cluster-demo: install
	test -f data/prepared/demo/manifest.json || $(PY) cli.py prepare --params pipelines/demo/params.yaml
	$(PY) cli.py submit --no-wait -- python cli.py sweep --params pipelines/demo/params.yaml

cluster-logs:
	$(PY) cli.py cluster logs --follow

cluster-down:
	$(PY) cli.py cluster down
