# Tasklane developer commands. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
# uv comes from PATH, or is bootstrapped into .tools/ with nothing but Python.
UV ?= $(shell command -v uv 2>/dev/null || echo .tools/bin/uv)
UV_VERSION := 0.13.9
VENV := .venv
PY := $(VENV)/bin/python
# make demo and make up: the runtime packages and the dev kit only (no chart, lint or type tools).
DEMO_VENV := .venv-demo
PYTEST_ARGS ?=
# pytest-xdist processes for make test and make integration; whole files stay on one process, so
# module-scoped workers and brokers are started once. Most tests wait on workers, not on CPU:
# three keep two cores busy (.ci/run took 18 min 54 s with 3, about 28 min with 2, on one VM).
PYTEST_WORKERS ?= 3
PARALLEL := -n $(PYTEST_WORKERS) --dist loadfile
# Django 6.x needs Python 3.12 or later (the workspace venv runs 3.11 and Django 5.2 LTS):
# make test-django6 runs the Django tests under this interpreter, found under pyenv or on PATH.
PYTHON_DJANGO6 ?= $(firstword $(wildcard $(HOME)/.pyenv/versions/3.12*/bin/python) python3.12)

.PHONY: help install demo up demo-django test test-django6 unit integration lint format typecheck bench bench-crawl bench-media bench-observability dashboards manifests chaos

help: ## List the targets
	@grep -hE '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "} {printf "  %-12s %s\n", $$1, $$2}'

.tools/bin/uv:
	$(PYTHON) -m venv .tools
	.tools/bin/pip install --quiet uv==$(UV_VERSION)

$(VENV)/.synced: uv.lock pyproject.toml shared/pyproject.toml services/*/pyproject.toml devkit/pyproject.toml | $(UV)
	$(UV) sync --locked --all-packages
	@touch $@

install: $(VENV)/.synced ## Install every package and tool into .venv (uv workspace, locked)

$(DEMO_VENV)/.synced: uv.lock pyproject.toml shared/pyproject.toml services/*/pyproject.toml devkit/pyproject.toml | $(UV)
	UV_PROJECT_ENVIRONMENT=$(DEMO_VENV) $(UV) sync --locked --no-dev --package tasklane-dev
	@touch $@

demo: $(DEMO_VENV)/.synced ## Real notifier and scraper workers: an email, an IM message and a crawl with its report (kept in ./demo-output/), then stop
	$(DEMO_VENV)/bin/python -m tasklane_dev.demo

up: $(DEMO_VENV)/.synced ## Start the demo stack (broker, sinks, notifier and scraper workers) and keep it running; Ctrl-C stops it
	$(DEMO_VENV)/bin/python -m tasklane_dev.demo --keep-running

demo-django: install ## Django quick start with a notifier worker: an order through the outbox and relay, a Beat firing added in the admin, Flower watching
	$(PY) examples/django_quickstart/demo.py

test: lint typecheck ## Lint, type-check and run the whole test suite, then the Django tests on Django 6.1
	$(PY) -m pytest $(PARALLEL) $(PYTEST_ARGS)
	$(MAKE) test-django6

# The 1,000-request proof and the demo (a minute of the main run) are not repeated here: they
# drive the same code through HTTP and a subprocess that the other tests already reach.
test-django6: | $(UV) ## The Django integration's tests on Python 3.12 and Django 6.1, in a throwaway uv environment
	TASKLANE_REQUIRE_DJANGO=6.1 $(UV) run --isolated --locked --no-python-downloads \
		--python $(PYTHON_DJANGO6) --with 'django>=6.1,<6.2' \
		python -m pytest tests/integration/django -m integration $(PARALLEL) $(PYTEST_ARGS) \
		--deselect tests/integration/django/test_example_outage.py \
		--deselect tests/integration/django/test_example.py::test_make_demo_django_takes_an_order_and_delivers_its_email_and_signed_robot_message

unit: install ## Run the tests that need no servers (not marked integration), chart tests included
	$(PY) -m pytest -m "not integration" $(PARALLEL) $(PYTEST_ARGS)

integration: install ## Run the integration tests (Redis, RabbitMQ, workers, sinks, images, KEDA)
	$(PY) -m pytest -m integration $(PARALLEL) $(PYTEST_ARGS)

lint: install ## ruff lint and format check; generated dashboards, chart files and manifests up to date
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) deploy/grafana/generate.py --check
	$(PY) deploy/helm/generate.py --check

format: install ## Apply ruff's formatting and safe fixes
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

typecheck: install ## mypy --strict on every package
	$(VENV)/bin/mypy

chaos: install ## Fault suite: N emails per scenario on both brokers; prints the table for docs/reliability.md
	$(PY) -m tests.chaos

bench: install ## Run the benchmarks in bench/ (prints ratios against their baselines)
	$(PY) bench/run.py
	$(PY) bench/publish_rabbitmq.py
	$(PY) bench/backlog.py
	$(PY) bench/observability.py
	$(PY) bench/crawl.py
	$(PY) bench/images.py
	$(PY) bench/video.py
	$(PY) bench/imports.py
	$(PY) bench/publisher_recovery.py
	$(PY) bench/outbox_relay.py
	$(PY) bench/beat_scale.py
	$(PY) bench/gateway.py
	$(PY) bench/result_store.py

dashboards: install ## Regenerate the Grafana dashboards in deploy/grafana/dashboards from code
	$(PY) deploy/grafana/generate.py

bench-crawl: install ## Only the crawl benchmark: pages/s of one scraper worker process
	$(PY) bench/crawl.py

bench-observability: install ## Metrics and tracing overhead vs bare Celery; /metrics scrape and RSS over 100k tasks
	$(PY) bench/observability.py

bench-media: install ## Only the media benchmarks: image thumbnails vs plain Pillow, video thumbnails
	$(PY) bench/images.py
	$(PY) bench/video.py

manifests: install ## Regenerate the chart's generated files and deploy/k8s (the chart with default values)
	$(PY) deploy/helm/generate.py

.PHONY: clients
clients: install ## Regenerate clients/typescript's openapi.json and src/schema.d.ts from the contracts
	$(VENV)/bin/tasklane contracts export --openapi clients/typescript/openapi.json
	[ -d clients/typescript/node_modules ] || npm ci --prefix clients/typescript
	npm --prefix clients/typescript run generate
