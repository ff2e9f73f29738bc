# Two commands on a fresh machine (Python 3.11 and make): `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# The hashed locks, compiled from pyproject.toml's ranges: runtime (the image, Procfile platforms) and
# dev (runtime + embedded servers + tests and tools, at the same versions).
LOCK_FLAGS := --universal --python-version 3.11 --generate-hashes --custom-compile-command "make lock" --quiet

.PHONY: help run test lint format lock bench faults clean

help:  ## These targets
	@grep -E '^[a-z]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/'


# Reinstall only when the lock changes: the stamp is newer than the lock otherwise.
$(STAMP): requirements/dev.txt
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --require-hashes -r requirements/dev.txt
	touch $(STAMP)

run: $(STAMP)  ## The whole service with embedded PostgreSQL, Redis and the Novita simulator
	$(BIN)/python -m gpujobs dev

test: $(STAMP)  ## The whole suite against real PostgreSQL, Redis, Celery workers and the simulator
	$(BIN)/ruff check .
	$(BIN)/mypy gpujobs bench
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(STAMP)  ## Benchmarks; each prints its figures (see bench/README.md)
	$(BIN)/python -m bench.efficiency
	$(BIN)/python -m bench.peer_procrastinate
	$(BIN)/python -m bench.priority
	$(BIN)/python -m bench.novita_calls
	$(BIN)/python -m bench.scale

faults: $(STAMP)  ## Fault injection with accounting (SIGKILL, Redis down and wiped, a lost message, PostgreSQL down, SIGSTOP, Sentinel failover)
	$(BIN)/python -m bench.faults --jobs 200

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy gpujobs bench

lock: $(STAMP)  ## Recompile both locks from pyproject.toml (UPGRADE=--upgrade takes every new release)
	$(BIN)/uv pip compile pyproject.toml $(LOCK_FLAGS) $(UPGRADE) -o requirements/runtime.txt
	$(BIN)/uv pip compile pyproject.toml --extra embedded --extra dev --extra bench $(LOCK_FLAGS) $(UPGRADE) \
		-c requirements/runtime.txt -o requirements/dev.txt

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache
