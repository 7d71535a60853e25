# The two commands a new machine needs (Python 3.11, Node 20 and npm; nothing else):
#   make demo   installs everything, runs the DAG for yesterday on local stand-ins, prints a summary
#   make test   installs everything, then runs the linter and the whole test suite
.PHONY: demo test bench lint

demo:
	bash scripts/demo.sh

test:
	bash scripts/test.sh

bench:
	bash scripts/bootstrap.sh && .venv/bin/python bench/run.py

lint:
	bash scripts/bootstrap.sh && .venv/bin/ruff check . && .venv/bin/ruff format --check .
