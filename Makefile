# The two commands of the README. Each one installs what it needs first.
.PHONY: setup demo test lint bench

setup:
	./.ci/setup

demo: setup
	./.venv/bin/python demo/quickstart.py
	./.venv/bin/python demo/bootchain.py

test: setup lint
	./.venv/bin/python -m pytest --ignore=tests/qemu
	./.ci/qemu-tests

lint:
	./.venv/bin/ruff check .
	./.venv/bin/ruff format --check .
	./.venv/bin/mypy
