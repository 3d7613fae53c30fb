# mailops developer commands. New machine: `make up` (run it all), `make test` (check it all).
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
MAILOPS := $(VENV)/bin/mailops
MAIL_PACKAGES := dovecot-imapd dovecot-lmtpd dovecot-pgsql dovecot-sieve \
                 dovecot-managesieved postfix postfix-pgsql isync
PYTEST_ARGS ?=

.PHONY: help up down test lint format bench lock mail-packages services venv clean

help: ## Show the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml requirements.lock
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.lock
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -e .
	@touch $@

venv: $(VENV)/.installed ## Create the Python environment from requirements.lock

mail-packages: ## Install Dovecot, Postfix and isync from Debian if missing (needs root)
	@missing=$$(for p in $(MAIL_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing $$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else \
	    echo "missing Debian packages: $$missing"; \
	    echo "install them with: sudo apt-get install $$missing"; exit 1; \
	  fi; \
	fi

services: ## Start PostgreSQL and Redis on this machine if they are down
	@pg_isready -q -h 127.0.0.1 -p 5432 || { \
	  echo "starting PostgreSQL"; \
	  pg_ctlcluster --skip-systemctl-redirect $$(ls /etc/postgresql) main start; }
	@redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 || { \
	  echo "starting Redis"; \
	  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no; }

up: venv mail-packages services ## Run the whole platform locally (APIs on 8001-8003)
	$(MAILOPS) up

down: ## Stop what `make up` started
	$(MAILOPS) down

lint: venv ## ruff check, ruff format --check, mypy --strict
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: venv ## Reformat and autofix
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

test: venv mail-packages services lint ## Lint, then every test against real PostgreSQL, Redis, Dovecot, Postfix
	$(VENV)/bin/pytest $(PYTEST_ARGS)

bench: venv mail-packages services ## Benchmarks vs the peer tools (BENCH="backup monitor" for some)
	$(PY) bench/run.py $(BENCH)

lock: ## Refresh requirements.lock from pyproject.toml
	rm -rf /tmp/mailops-lock && python3 -m venv /tmp/mailops-lock
	/tmp/mailops-lock/bin/pip install --quiet -e '.[dev]'
	{ echo "# Exact versions the tests ran with (pip freeze of .venv); \`make lock\` refreshes it."; \
	  /tmp/mailops-lock/bin/pip freeze --exclude-editable | grep -v '^mailops'; } > requirements.lock

clean: ## Remove the environment and local state
	rm -rf $(VENV) .mailops .mypy_cache .ruff_cache .pytest_cache
