# The README's commands are these targets; .ci/run calls `make test` too.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
DEB_PACKAGES := ffmpeg redis-server espeak-ng chromium chromium-driver nginx-light libjemalloc2

.PHONY: install run test lint typecheck docs clean

# Debian packages (only those missing; without apt-get, what to install instead), then a virtualenv with torch first, then the rest;
# then the e2e tests' Node packages (Node.js and npm are not Debian packages here: NodeSource's nodejs bundles npm).
install: $(STAMP)
$(STAMP): requirements.txt requirements-api.txt requirements-dev.txt requirements-nodeps.txt pyproject.toml tests/e2e/node/package-lock.json
	@bash infra/system-packages.sh $(DEB_PACKAGES)
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$$(grep -E '^torch==' requirements.txt)"
	$(PIP) install -q -r requirements-dev.txt
	$(PIP) install -q --no-deps -r requirements-nodeps.txt
	$(PIP) install -q --no-deps -e .
	@command -v npm >/dev/null 2>&1 || { echo "make: npm is missing: install Node.js 20 or later with npm (the e2e tests run the openai npm SDK)" >&2; exit 1; }
	npm ci --prefix tests/e2e/node --no-audit --no-fund
	touch $(STAMP)

# The whole service on http://127.0.0.1:8080: Redis, an S3-compatible server, the functions, a worker.
run: install
	$(VENV)/bin/whisper-api dev

# Everything on one redis-server, then the end-to-end suite again on a 3 + 3 Redis Cluster.
test: install lint typecheck docs
	$(PY) -m pytest
	$(PY) -m pytest --redis=cluster tests/e2e --deselect tests/e2e/test_sentinel_failover.py

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: install
	$(VENV)/bin/mypy shared functions

# The documentation site, docs/ and mkdocs.yml, into site/. --strict: a broken link or anchor, an
# included file that is gone or a page missing from the nav fails. Material for MkDocs announces
# its end of life (May 2027; its successor, Zensical, is at 0.1) on every build: said here once.
docs: install
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

clean:
	rm -rf $(VENV) .data .mypy_cache .ruff_cache .pytest_cache site docs/reference/openapi.json
