# usage: make serve | make test | make lint | make stop | make train | make evaluate | make calibrate | make mar | make bench [QUICK=1]
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
ARTIFACTS ?= model_store/artifacts
MAR := model_store/imdb_sentiment.mar

.PHONY: install mar serve stop status test lint train evaluate calibrate bench clean

install: $(VENV)/.installed

$(VENV)/.installed: requirements.txt pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $@

mar: $(MAR)

$(MAR): install $(wildcard handler/*.py) $(wildcard $(ARTIFACTS)/*) model-config.yaml scripts/build_mar.py
	$(PY) scripts/build_mar.py --artifacts $(ARTIFACTS)

serve: mar
	$(PY) scripts/serve.py start

stop:
	$(PY) scripts/serve.py stop

status:
	$(PY) scripts/serve.py status

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: install
	$(PY) -m pytest -q tests

train: install
	$(PY) scripts/train.py --out $(ARTIFACTS)

evaluate: install
	$(PY) scripts/evaluate.py --artifacts $(ARTIFACTS)

calibrate: install
	$(PY) scripts/calibrate.py --artifacts $(ARTIFACTS)

bench: install
	$(PY) scripts/bench.py $(if $(QUICK),--quick,)

clean:
	rm -rf $(MAR) logs key_file.json
