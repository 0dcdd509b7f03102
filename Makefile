# The two commands a newcomer needs are `make demo` and `make test`; both go through `make setup`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
JARS := .cache/jars
export SPARK_LOCAL_IP ?= 127.0.0.1
export PYSPARK_PYTHON := $(abspath $(BIN)/python)
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: setup demo test notebooks status lint serve-sql stop-sql serve-api stop-api cluster-up cluster-down cluster-demo chaos bench bench-ingest bench-refine bench-link bench-gold bench-ml bench-api bench-generator clean help

help:
	@echo "make setup  - create .venv, install the lakehouse command, cache Delta's jars (idempotent)"
	@echo "make demo   - generate a 5-hospital sample (every dialect) and run bronze -> silver -> gold -> train -> score"
	@echo "make test   - run the test suite (what CI runs)"
	@echo "make notebooks - run notebooks/*.ipynb headless on the demo lakehouse (after make demo); copies in var/notebooks"
	@echo "make status - the lakehouse at a glance: tables, last runs, quarantine, champions"
	@echo "make lint   - ruff"
	@echo "make serve-sql / stop-sql - the SQL endpoint (Thrift JDBC/ODBC :10000, Spark Connect :15002) on the demo lakehouse"
	@echo "make serve-api / stop-api - the REST read API (:8000) on the demo lakehouse; tokens: lakehouse api-token"
	@echo "make cluster-up / cluster-down - a Spark standalone cluster on 127.0.0.1 (master :7077, UI :8080, two workers)"
	@echo "make cluster-demo - the whole demo through spark-submit on that cluster (root: $(CLUSTER_ROOT))"
	@echo "make chaos  - the kill trials of every job: seeded 0 then held (as make test), and seeded 1..CHAOS_TRIALS-1 (default 5)"
	@echo "make bench  - bench-ingest, bench-refine, bench-link, bench-gold, bench-ml, then bench-generator"
	@echo "make bench-ingest    - bronze ingest rows/s per format vs a plain Spark read, at INGEST_SIZES persons"
	@echo "                       (default 7500 75000: ~1M and ~10M rows; ~25 min, 3 GB disk)"
	@echo "make bench-refine    - silver refine rows/s and a day-2 increment's cost vs a full rebuild, at REFINE_SIZES"
	@echo "make bench-link      - person linkage quality vs the generator's truth and records/s, at LINK_SIZES"
	@echo "make bench-gold      - gold full build vs a day-2 increment, timeline lookups, the diabetes cohort, at GOLD_SIZES"
	@echo "make bench-ml        - both tasks trained at ML_SIZES persons vs the planted ceiling; training on ML_ROWS rows"
	@echo "make bench-api       - the API's timeline endpoint: p50/p95 latency and requests/s with 4 clients, at API_SIZES"
	@echo "                       persons (gold replicated from the demo's; default 100000 1000000; ~40 min, 12 GB)"
	@echo "make bench-generator - generator throughput at GEN_SIZES persons (default 100000 1000000; ~20 min, 28 GB)"
	@echo "make clean  - remove var/ (all generated data, Delta tables, MLflow stores)"

setup: $(VENV)/.installed $(JARS)/MANIFEST

$(VENV)/.installed: pyproject.toml
	@command -v java >/dev/null || { echo "error: java not found: Spark 4 needs Java 17 (apt-get install openjdk-17-jre-headless)"; exit 2; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@

$(JARS)/MANIFEST: support/delta-jars/pom.xml $(VENV)/.installed
	@command -v mvn >/dev/null || { echo "error: mvn not found: it fetches Delta's jars once (apt-get install maven)"; exit 2; }
	$(BIN)/python -m lakehouse.jars fetch --pom support/delta-jars/pom.xml --cache $(JARS)

demo: setup
	$(BIN)/lakehouse run-all

test: setup
	$(BIN)/python -m pytest

notebooks: setup
	$(BIN)/python -m lakehouse.notebooks

status: setup
	$(BIN)/lakehouse status

lint: setup
	$(BIN)/ruff check lakehouse jobs tests

serve-sql: setup
	$(BIN)/lakehouse serve-sql

stop-sql: setup
	$(BIN)/lakehouse serve-sql --stop

serve-api: setup
	$(BIN)/lakehouse serve-api

stop-api: setup
	$(BIN)/lakehouse serve-api --stop

cluster-up: setup
	$(BIN)/lakehouse cluster up

cluster-down: setup
	$(BIN)/lakehouse cluster down

# The demo through spark-submit on the cluster: the project as a --py-files build, executors on a Python
# without the project; its own root so it runs every stage, whatever `make demo` left.
CLUSTER_ROOT ?= var/cluster-demo/lakehouse
cluster-demo: cluster-up
	$(BIN)/lakehouse cluster --env cluster --root $(CLUSTER_ROOT) submit run-all

# Benchmarks are measured, never part of `make test`; results go to bench/results/<date>-*.json.
GEN_SIZES ?= 100000 1000000
INGEST_SIZES ?= 7500 75000
REFINE_SIZES ?= 7500 30000
LINK_SIZES ?= 20000 100000
GOLD_SIZES ?= 4000 12000
ML_SIZES ?= 6000
ML_ROWS ?= 1000000
API_SIZES ?= 100000 1000000
chaos: setup
	CHAOS_TRIALS=$${CHAOS_TRIALS:-5} $(BIN)/python -m pytest tests/test_crash.py -p no:cacheprovider

bench: bench-ingest bench-refine bench-link bench-gold bench-ml bench-api bench-generator

bench-ingest: setup
	$(BIN)/python bench/ingest_scale.py --sizes $(INGEST_SIZES) --workers $$(nproc) --out var/bench/ingest

bench-refine: setup
	$(BIN)/python bench/refine_scale.py --sizes $(REFINE_SIZES) --workers $$(nproc) --out var/bench/refine

bench-link: setup
	$(BIN)/python bench/link_scale.py --sizes $(LINK_SIZES) --workers $$(nproc) --out var/bench/link

bench-gold: setup
	$(BIN)/python bench/gold_scale.py --sizes $(GOLD_SIZES) --workers $$(nproc) --out var/bench/gold

bench-ml: setup
	$(BIN)/python bench/ml_scale.py --sizes $(ML_SIZES) --replicate-to $(ML_ROWS) --workers $$(nproc) --out var/bench/ml

bench-api: setup
	@test -d var/lakehouse/gold/patient_timeline || { echo "bench-api replicates the demo's gold: run make demo first"; exit 2; }
	$(BIN)/python bench/api_latency.py --source var/lakehouse --sizes $(API_SIZES) --out var/bench/api

bench-generator: setup
	$(BIN)/python bench/generator_scale.py --sizes $(GEN_SIZES) --workers $$(nproc) --out var/bench/gen

clean:
	rm -rf var spark-warehouse metastore_db derby.log
