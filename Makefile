# geoetl: `make up` starts the local stack, `make test` runs the tests (starting what they need).
.PHONY: up down status logs test lint bench bench-serving install clean

up:
	@scripts/stack.sh up

down:
	@scripts/stack.sh down

status:
	@scripts/stack.sh status

logs:
	@scripts/stack.sh logs

install:
	@scripts/bootstrap.sh --test

test: install
	.venv/bin/ruff check .
	.venv/bin/python -m pytest $(PYTEST_ARGS)

lint: install
	.venv/bin/ruff check .

bench:
	@scripts/bootstrap.sh --bench
	.venv/bin/python -m bench $(BENCH_ARGS)

bench-serving:
	@scripts/bootstrap.sh --bench
	.venv/bin/python -m bench.serving $(BENCH_ARGS)

clean: down
	rm -rf .run
