# The README's two commands: `make demo` and `make test`. Both create/update .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# The offline demo pipeline: prepare -> sweep -> evaluate -> report on generated data (~5 min, 2 CPUs).
demo: install
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" dvc repro pipelines/demo/dvc.yaml
	@echo "Browse the runs: $(VENV)/bin/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db  (then open http://127.0.0.1:5000)"

test: install
	$(PY) -m pytest -q
