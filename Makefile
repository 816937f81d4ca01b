# usage: make serve | make serve-kserve | make test | make test-quick | make lint | make stop | make train | make evaluate | make calibrate | make mar [VERSION=2.0]
#        make bench [QUICK=1] | make bench-served | make soak | make chaos (slow reliability runs, docs/reliability.md)
#        make image | make image-test (slow: docs/deploy.md)
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
ARTIFACTS ?= model_store/artifacts
# One archive per version: imdb_sentiment.mar for 1.0 (what config.properties loads), else
# imdb_sentiment-$(VERSION).mar (scripts/build_mar.py).
VERSION ?= 1.0
MAR := model_store/imdb_sentiment$(if $(filter-out 1.0,$(VERSION)),-$(VERSION),).mar

.PHONY: install mar serve serve-kserve stop status test test-quick lint train evaluate calibrate bench bench-served soak chaos clean image image-test

install: $(VENV)/.installed

$(VENV)/.installed: requirements.txt $(wildcard requirements/*.txt) pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $@

mar: $(MAR)

$(MAR): $(VENV)/.installed $(wildcard handler/*.py) $(wildcard $(ARTIFACTS)/*) model-config.yaml imdb_ops/build_mar.py
	$(PY) scripts/build_mar.py --artifacts $(ARTIFACTS) --version $(VERSION)

serve: mar
	$(PY) scripts/serve.py start

# The same archive on KServe's Python model server (kserve_server/), HTTP on 127.0.0.1:8085.
serve-kserve: mar
	$(PY) scripts/serve_kserve.py start

stop:
	$(PY) scripts/serve.py stop
	$(PY) scripts/serve_kserve.py stop

status:
	$(PY) scripts/serve.py status
	$(PY) scripts/serve_kserve.py status

# ruff (lint, format), the import contracts (pyproject.toml [tool.importlinter]) and the one complexity
# gate: radon's cyclomatic complexity at most 10 (rank B) for every function, tests and scripts included.
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/xenon --max-absolute B handler kserve_server imdb_client imdb_training imdb_ops imdb_bench scripts tests

test: install
	$(PY) -m pytest -q tests

# The quick loop: every test but those marked integration (a real TorchServe or KServe server, Docker files).
test-quick: install
	$(PY) -m pytest -q -m "not integration" tests

train: install
	$(PY) scripts/train.py --out $(ARTIFACTS)

evaluate: install
	$(PY) scripts/evaluate.py --artifacts $(ARTIFACTS)

calibrate: install
	$(PY) scripts/calibrate.py --artifacts $(ARTIFACTS)

# bench: the engine comparison (QUICK=1: 64 reviews, about 1 min), then the served load test.
bench: install
	$(PY) scripts/bench_engines.py $(if $(QUICK),--quick,)
	$(if $(QUICK),,$(PY) scripts/bench_served.py)

# bench-served: issue 13's served mixed-length case alone (TorchServe vs the handler in-process,
# batchSize 8, one IMDB review per request at the real length mix, concurrency 1, 8 and 32).
bench-served: install
	$(PY) scripts/bench_served.py

soak: mar
	$(PY) scripts/soak.py soak $(if $(SERVER),--server $(SERVER),)

chaos: mar
	$(PY) scripts/soak.py chaos $(if $(SERVER),--server $(SERVER),)

clean:
	rm -rf $(MAR) logs key_file.json

# The container image (Dockerfile; docs/deploy.md). SERVER (torchserve|kserve), TAG, DEVICE (cpu|gpu),
# BASE_IMAGE, BUILD_ENV may be set: `make image` is TorchServe's imdb-sentiment:1.0, `make image
# SERVER=kserve` KServe's Python model server as imdb-sentiment:1.0-kserve (the manifests' names).
TAG ?= imdb-sentiment:1.0$(if $(filter kserve,$(SERVER)),-kserve,)
image: mar
	docker build -t $(TAG) --build-arg SERVER=$(or $(SERVER),torchserve) --build-arg DEVICE=$(or $(DEVICE),cpu) \
	  $(if $(BASE_IMAGE),--build-arg BASE_IMAGE=$(BASE_IMAGE),) $(if $(BUILD_ENV),--build-arg BUILD_ENV=$(BUILD_ENV),) .

# Builds both images (SERVER=torchserve and SERVER=kserve) on a local Debian base with a private
# dockerd, runs each read-only and checks its answers against the same server run locally, and its
# stop as a rolling restart stops it (minutes; run it when the Dockerfile, requirements/,
# deploy/storage/ or kserve_server/ change; SERVERS=kserve for one).
image-test: mar
	$(PY) scripts/image_test.py $(if $(SERVERS),--servers $(SERVERS),)
