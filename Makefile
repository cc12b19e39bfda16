# distillguard: every target sets up .venv itself.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# System packages (Debian names) that pip cannot install: scripts/provision.sh checks them on every run (a few
# milliseconds), installs the missing ones as root with apt-get, or else stops make with one line naming them.
# The demo needs only Python's venv; the tests also start a real redis-server, a real PostgreSQL server
# (tests/postgres_server.py) and a headless Chromium.
PROVISION = PYTHON="$(PYTHON)" VENV="$(VENV)" bash scripts/provision.sh
DEMO_PACKAGES := python3-venv
TEST_PACKAGES := python3-venv redis-server chromium postgresql

.PHONY: demo test bench lint install clean provision-demo provision-test reference

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# provisioning comes first: a missing package stops make before minutes of pip installs
provision-demo:
	@$(PROVISION) "make demo" $(DEMO_PACKAGES)

provision-test:
	@$(PROVISION) "make test" $(TEST_PACKAGES)

demo: provision-demo $(STAMP)
	$(BIN)/distillguard demo

test: provision-test $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python bench/run.py

# the monitor's shipped default benign reference, refitted from the simulator (after a feature change)
reference: $(STAMP)
	$(BIN)/python -m distillguard.monitor.shipped

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
