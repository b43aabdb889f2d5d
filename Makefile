# GFlow services: every target sets up what it needs itself (a .venv beside this file).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PROTOS := $(wildcard proto/gflow/v1/*.proto)
STUBS := gflow/v1/common_pb2.py

.PHONY: setup proto test test-containers browser lint demo serve bench clean

setup: $(VENV)/.installed $(STUBS)

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check "grpcio-tools>=1.62,<2"
	$(MAKE) proto
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[dev]'
	touch $@

# Generated stubs (package gflow.v1) are not committed: `make proto` rebuilds them.
proto: $(BIN)/python
	rm -rf gflow
	$(BIN)/python -m grpc_tools.protoc -I proto --python_out=. --grpc_python_out=. \
		--pyi_out=. $(PROTOS)
	touch gflow/__init__.py gflow/v1/__init__.py

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STUBS): $(PROTOS) | $(VENV)/.installed
	$(MAKE) proto

test: setup browser
	$(BIN)/python -m pytest -q -ra

# The services as real containers (as root: installs docker.io and debootstrap, starts dockerd,
# builds the images from a local Debian base; see docs/deploy.md).
test-containers: setup
	deploy/lab/test-containers.sh

# Headless Chromium for the report test (Debian package; skipped with a message where apt is absent).
browser:
	@command -v chromium >/dev/null || (command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) || \
		echo "chromium not installed: the report browser test will be skipped"

lint: setup
	$(BIN)/ruff check services tests bench
	$(BIN)/ruff format --check services tests bench

demo: setup
	$(BIN)/gflow demo

serve: setup
	$(BIN)/gflow serve

bench: setup
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) gflow .pytest_cache
