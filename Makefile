# Two commands do everything on a fresh machine:
#   make run    set up (virtualenv, requirements, migrate, demo data) and serve on http://127.0.0.1:8000
#   make test   set up and run the whole test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: run test setup deps migrate demo worker lint check bench clean browser-deps promtool-deps

$(VENV)/.installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -r requirements.txt
	touch $@

deps: $(VENV)/.installed

setup: deps
	$(PY) manage.py migrate --noinput

demo: setup
	$(PY) manage.py demo_data

run: demo
	@echo ""
	@echo "  Inbox:  http://$(HOST):$(PORT)/        Admin: http://$(HOST):$(PORT)/admin/"
	@echo ""
	ALLOWED_ORIGINS="$${ALLOWED_ORIGINS:-http://$(HOST):$(PORT),http://localhost:$(PORT)}" \
	  $(VENV)/bin/daphne -b $(HOST) -p $(PORT) --websocket-max-message-size 65536 --websocket-max-frame-size 65536 --websocket_connect_timeout 30 config.asgi:application

worker: setup
	$(VENV)/bin/celery -A config worker -Q inbound,default -l info

# The browser tests drive Debian's Chromium (Playwright's own browser download does not work here).
browser-deps:
	@test -x /usr/bin/chromium || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-noto-color-emoji; }

# promtool checks and unit-tests the shipped alerting rules (deploy/prometheus/, tests/hostile/test_alert_rules.py).
promtool-deps:
	@command -v promtool >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus; }

test: deps browser-deps promtool-deps
	$(VENV)/bin/ruff check .
	$(PY) manage.py makemigrations --check --dry-run
	$(PY) manage.py check
	$(VENV)/bin/pytest $(PYTEST_ARGS)

lint: deps
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# Benchmarks (bench/README.md): PostgreSQL on 127.0.0.1:5432 (database inbox_bench, or BENCH_DATABASE_URL), a private
# Redis and Daphne/Celery started on free loopback ports. `make bench` runs everything; SCEN=m1 (or m2..m10, floor,
# scaleout) runs one scenario; QUICK=1 shortens every duration.
bench: deps
ifeq ($(SCEN),scaleout)
	$(PY) -m bench.scaleout $(if $(QUICK),--quick)
else ifeq ($(SCEN),)
	$(PY) -m bench.run $(if $(QUICK),--quick)
	$(PY) -m bench.scaleout $(if $(QUICK),--quick)
else
	$(PY) -m bench.run $(if $(QUICK),--quick) $(SCEN)
endif

clean:
	rm -rf $(VENV) db.sqlite3 test-db.sqlite3 media
