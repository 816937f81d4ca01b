# usage: make serve | make test | make lint | make stop | make train | make evaluate | make mar | make bench [QUICK=1] | make bench-served
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
ARTIFACTS ?= model_store/artifacts
MAR := model_store/imdb_sentiment.mar

.PHONY: install mar serve stop status test lint train evaluate bench bench-served clean

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

# bench: the engine comparison (QUICK=1: 64 reviews, about 1 min), then the served load test.
bench: install
	$(PY) scripts/bench_engines.py $(if $(QUICK),--quick,)
	$(if $(QUICK),,$(PY) scripts/bench_served.py)

# bench-served: issue 13's served mixed-length case alone (TorchServe vs the handler in-process,
# batchSize 8, one IMDB review per request at the real length mix, concurrency 1, 8 and 32).
bench-served: install
	$(PY) scripts/bench_served.py

clean:
	rm -rf $(MAR) logs key_file.json
