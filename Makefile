# darkroom: the two quickstart commands are `make demo` and `make test`; both set up whatever is missing first.
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo test test-heavy lint bench-quick clean

setup:  ## apt packages (JDK 17 if no java, redis-server, maven), the pinned .venv, the Delta jars; safe to re-run
	bash scripts/bootstrap.sh

demo: setup  ## the main job on embedded defaults: the small world through every DAG over a simulated week, the HTML report
	$(BIN)/darkroom demo

test: setup  ## the test suite (CI runs exactly this); heavy cases are behind the `heavy` marker
	$(BIN)/pytest -m "not heavy"

test-heavy: setup  ## the heavy cases only (the end-to-end platform test, airflow standalone, ...)
	$(BIN)/pytest -m heavy

lint:
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

bench-quick: setup  ## every benchmark with --quick
	$(BIN)/darkroom bench generate --quick
	$(BIN)/darkroom bench ingest --quick
	$(BIN)/darkroom bench dbt_build --quick

clean:  ## removes the state folder (lake, landing, reports, Airflow and Spark state); keeps the venv and the jars
	find .darkroom -mindepth 1 -maxdepth 1 ! -name jars -exec rm -rf {} +
