# The two commands of the README: `make demo` and `make test`. Both set up everything they need.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
IN_NS := scripts/netns.sh exec

.PHONY: demo test test-loaded faults soak venv server chromium espeak redis web bench bench-quick bench-ducking lint clean

# Writes demo-call.wav and demo-call.png here (DEMO_ARGS="--out-dir DIR" to move them).
demo: venv server web espeak
	$(IN_NS) $(PY) -m scripts.demo $(DEMO_ARGS)

test: venv server chromium espeak redis web
	$(IN_NS) $(PY) -m pytest $(PYTEST_ARGS)

# The same suite while both cores are kept 80% busy by a bounded background load (scripts/cpu_load.py): CI
# runners are shared machines, and a test that only passes on a quiet one is a flaky test.
# PYTEST_ARGS="--reverse" runs the suite in reverse order.
test-loaded: venv server chromium espeak redis web
	$(PY) -m scripts.cpu_load --duty $${LOAD_DUTY:-0.8} -- $(IN_NS) $(PY) -m pytest $(PYTEST_ARGS)

venv: $(STAMP)
$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "Python >= 3.11 is needed (found $$($(PYTHON) --version))"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

# The real livekit-server, built from source once and cached under ~/.cache/lk-speech-bridge.
server: venv
	$(PY) -m scripts.livekit_server build

# Debian's chromium for the browser test (needs root and apt; elsewhere install it yourself).
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			echo "installing Debian's chromium for the browser test..."; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
		else echo "chromium is missing: install it (e.g. apt-get install chromium) to run the browser test"; fi; }

# Debian's espeak-ng: the emulator speaks the brain's text with it, the demo's callers speak with it, and the
# ducking benchmark's backchannels, talk-overs and echoes are made with it.
espeak:
	@command -v espeak-ng >/dev/null 2>&1 || { \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			echo "installing Debian's espeak-ng for the emulator's speech and the ducking benchmark..."; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq espeak-ng >/dev/null; \
		else echo "espeak-ng is missing: install it (e.g. apt-get install espeak-ng) for the demo and the speech tests"; fi; }

# Debian's redis-server for the two-node LiveKit cluster tests (tests/test_cluster.py). Only installed here:
# the tests start their own on loopback (scripts/redis_server.py), on a port of their own, without persistence.
redis:
	@command -v redis-server >/dev/null 2>&1 || { \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			echo "installing Debian's redis-server for the cluster tests..."; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; \
		else echo "redis-server is missing: install it (e.g. apt-get install redis-server) to run the cluster tests"; fi; }

# The browser page's livekit-client, pinned by web/package-lock.json.
web: web/node_modules/livekit-client/package.json
web/node_modules/livekit-client/package.json: web/package.json web/package-lock.json
	npm ci --prefix web --no-audit --no-fund --loglevel=error
	touch $@

# The fault matrix (docs/FAULTS.md) from a fresh run of the fault, limits and soak tests.
faults: venv server
	rm -f artifacts/fault_matrix.json
	$(IN_NS) $(PY) -m pytest tests/test_faults.py tests/test_security.py tests/test_soak.py $(PYTEST_ARGS); \
		status=$$?; $(PY) -m scripts.fault_matrix; exit $$status

# The long soak (20 sessions x 10 min by default; SOAK_ARGS="--sessions 5 --minutes 2").
soak: venv server
	$(IN_NS) $(PY) -m benchmarks.soak $(SOAK_ARGS)

bench-quick: venv server
	$(IN_NS) $(PY) -m benchmarks --quick

bench: venv server
	$(IN_NS) $(PY) -m benchmarks

# False ducks and onset->duck latency on the labelled espeak-ng set, offline (~5 min; no server needed).
bench-ducking: venv espeak
	$(PY) -m benchmarks.ducking $(DUCK_ARGS)

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
