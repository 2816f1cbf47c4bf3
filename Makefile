# DetBooth: `make run` brings the whole stack up on loopback; `make test` runs the whole suite.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
CHROMIUM := $(VENV)/.chromium
FONTS    := $(VENV)/.fonts
PYTEST_ARGS ?=
# Three pytest-xdist workers, a test file each at a time (its module fixtures built once), files in the order
# collected: the suite waits on servers and jobs much of the time, so three keep two cores busy (clean clone,
# 2 cores: 5 min 10 s with three, 6 min 16 s with two). PYTEST_ARGS="-n 0" runs it in one process.
TEST_WORKERS ?= -n 3 --dist loadfile --no-loadscope-reorder

.PHONY: install run test test-fast bench gpu-check lint compose-check clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -U pip wheel setuptools
	# torch first and pinned: here the CPU build on disk, on a GPU host the CUDA build from PyPI
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[all]'
	# only for the CLIP BPE vocabulary file of the tiny test model; its torchvision dependency would
	# replace torch, so it is installed without dependencies and never imported
	$(PY) -m pip install -q --no-deps open_clip_torch==3.3.0
	touch $(STAMP)

# The web console's browser tests drive Debian's chromium package (Playwright never downloads a browser).
$(CHROMIUM):
	@if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null; then \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -q && $$SUDO apt-get install -y -q --no-install-recommends chromium; \
	fi
	@[ -x /usr/bin/chromium ] || { echo "error: /usr/bin/chromium is missing: install Debian's chromium package" >&2; exit 1; }
	@mkdir -p $(VENV) && touch $@

# Latin and CJK fonts for the detection calibration/validation renderer (services/detection/textset).
$(FONTS):
	@if { [ ! -d /usr/share/fonts/truetype/wqy ] || [ ! -d /usr/share/fonts/truetype/dejavu ]; } && command -v apt-get >/dev/null; then \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -q && $$SUDO apt-get install -y -q --no-install-recommends fonts-dejavu-core fonts-wqy-microhei; \
	fi
	@mkdir -p $(VENV) && touch $@

install: $(STAMP) $(CHROMIUM) $(FONTS)

run: $(STAMP) $(FONTS)
	$(PY) -m services.stack

test: $(STAMP) $(CHROMIUM) $(FONTS)
	$(PY) -m pytest -p no:cacheprovider $(TEST_WORKERS) $(PYTEST_ARGS)

test-fast: $(STAMP) $(CHROMIUM) $(FONTS)
	$(PY) -m pytest -p no:cacheprovider -m "not slow" $(TEST_WORKERS) $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) bench/detect_bench.py
	$(PY) bench/train_bench.py
	$(PY) bench/gen_bench.py

gpu-check:
	bash bench/gpu_check.sh

compose-check: $(STAMP)
	$(PY) -m pytest -q tests/unit/test_compose.py

clean:
	rm -rf $(VENV) data .pytest_cache
