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

# Debian packages the suite and the demo need, installed as root with apt when missing (elsewhere: say so).
# $(call apt_need,COMMAND,PACKAGE,WHAT FOR)
apt_need = @command -v $(1) >/dev/null 2>&1 || { \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing Debian's $(2) ($(3))..."; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(2) >/dev/null; \
	else echo "$(1) is missing: install it (e.g. apt-get install $(2)) for $(3)"; fi; }

chromium:
	$(call apt_need,chromium,chromium,the browser test)

# The emulator speaks the brain's text with espeak-ng, the demo's callers too, and the ducking benchmark's
# backchannels, talk-overs and echoes are made with it.
espeak:
	$(call apt_need,espeak-ng,espeak-ng,the emulator's speech and the ducking benchmark)

# The two-node LiveKit cluster tests start their own redis-server on loopback (scripts/redis_server.py), on a
# port of their own, without persistence; only the package is installed here.
redis:
	$(call apt_need,redis-server,redis-server,the cluster tests)

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
