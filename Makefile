# The two set-up commands: `make demo` and `make test`. Both install what is missing first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
# lerobot's own LeRobotDataset, in an environment of its own: lerobot 0.4.4 pins torch<2.11,
# which does not install beside the project's torch. Only the LeRobot compatibility test uses it.
LEROBOT_VENV := .venv-lerobot
LEROBOT_REQS := tools/lerobot_check/requirements.txt
LEROBOT_STAMP := $(LEROBOT_VENV)/.installed-$(shell cksum $(LEROBOT_REQS) | cut -d' ' -f1)

export FLYWHEEL_HOME ?= $(CURDIR)/.flywheel
export DAGSTER_HOME ?= $(FLYWHEEL_HOME)/dagster_home

.PHONY: install lerobot-env browser demo drill test test-fast test-faults dev bench lint clean

# pip's own output is off (hundreds of lines); `make install PIP_QUIET=` shows it.
PIP_QUIET ?= --quiet

# One shell per install, so the elapsed time can be printed at the end.
$(STAMP): pyproject.toml
	@set -e; start=$$(date +%s); \
	echo "make: installing the project into $(VENV)/ (pip install -e '.[dev]': dagster, PyTorch CPU, MuJoCo,"; \
	echo "      MLflow, ...; several minutes the first time, mostly downloads; again whenever pyproject.toml changes)"; \
	$(PYTHON) -m venv $(VENV); \
	$(BIN)/pip install $(PIP_QUIET) --upgrade pip; \
	$(BIN)/pip install $(PIP_QUIET) -e '.[dev]'; \
	rm -f $(VENV)/.installed-*; \
	touch $(STAMP); \
	echo "make: $(VENV)/ ready in $$(( $$(date +%s) - start )) s"

install: $(STAMP)

# --no-deps: the requirements file is the whole, pinned environment (it says why it leaves
# lerobot's torch range). The import at the end fails the build here rather than in the test.
$(LEROBOT_STAMP): $(LEROBOT_REQS)
	@set -e; start=$$(date +%s); \
	echo "make: building $(LEROBOT_VENV)/, lerobot 0.4.4's own environment for the LeRobot compatibility test"; \
	echo "      (its own torch; a few minutes the first time, mostly downloads)"; \
	$(PYTHON) -m venv --clear $(LEROBOT_VENV); \
	echo '*' > $(LEROBOT_VENV)/.gitignore; \
	$(LEROBOT_VENV)/bin/pip install $(PIP_QUIET) --no-deps --only-binary :all: -r $(LEROBOT_REQS); \
	$(LEROBOT_VENV)/bin/python -W ignore -c 'import lerobot.datasets.lerobot_dataset'; \
	touch $(LEROBOT_STAMP); \
	echo "make: $(LEROBOT_VENV)/ ready in $$(( $$(date +%s) - start )) s"

## The separate environment with lerobot 0.4.4 for the LeRobot compatibility test
lerobot-env: $(LEROBOT_STAMP)

## Headless Chromium for the UI tests (the Debian package, installed as root when missing;
## without it the UI tests skip, except under CI, where .ci/run has installed it already)
browser:
	bash tools/ensure_browser.sh || echo "make: no Chromium, the UI tests (flywheel_pipelines_tests/ui) will skip"

## Simulate a 3-robot x 2-day fleet and materialize every asset into .flywheel/
demo: install
	$(BIN)/flywheel demo

## The on-call drill: a bad release found from its version alone, quarantined, replaced (prints its time)
drill: install
	$(BIN)/flywheel drill

## The whole test suite (CI runs exactly this; about 20-25 minutes on 2 cores)
test: install lerobot-env browser
	@echo "make: running the whole suite (about 20-25 minutes on 2 cores; make test-fast skips the slow tests)"
	$(BIN)/pytest

## The suite without the slow end-to-end tests
test-fast: install lerobot-env
	$(BIN)/pytest -m "not slow"

## Only the fault-injection suite (docs/reliability.md); `make test` runs it too
test-faults: install
	$(BIN)/pytest flywheel_pipelines_tests/faults flywheel_pipelines_tests/infra/test_s3_fault_proxy.py flywheel_pipelines_tests/infra/test_s3_faults.py

## The Dagster UI on the same code location and lake as the demo
dev: install
	mkdir -p $(DAGSTER_HOME)
	test -f $(DAGSTER_HOME)/dagster.yaml || cp dagster.yaml $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000

## Ingest throughput beside mcap-ros2-support (prints the ratio)
bench: install
	$(BIN)/python benchmarks/bench_ingest.py

lint: install
	$(BIN)/ruff check flywheel_pipelines flywheel_pipelines_tests benchmarks tools

clean:
	rm -rf $(VENV) $(LEROBOT_VENV) .flywheel
