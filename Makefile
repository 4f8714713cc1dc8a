# Two commands on a fresh machine: `make chat` and `make test`. Each creates .venv and installs what it needs once;
# the stamp file makes the second run instant unless the build inputs changed.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
MODEL  ?=
# Pinned: this version resolves to a local CPU build; an unpinned torch pulls gigabytes of CUDA packages.
TORCH  := torch==2.13.0
# The exact versions the whole suite last passed with (`make upgrade-deps` rewrites it, only when the suite is green).
# setup.py keeps ranges, for users who install gpt2tui beside other things.
CONSTRAINTS := constraints.txt
PIP    := $(BIN)/python -m pip install -q -c $(CONSTRAINTS)
# Strict editable mode installs a link tree (build/__editable__.*) that maps kernels/ and training/ to gpt2tui.kernels
# and gpt2tui.training; the default mode cannot map folders without __init__.py (setup.py says why they have none).
EDITABLE := --config-settings editable_mode=strict

.PHONY: chat test test-asan bench gpu-check install upgrade-deps clean browser FORCE

# The link tree has a link per file, so adding or removing a package file needs a new install, while editing one does
# not: the stamp depends on the list of files, which is rewritten only when it changes.
PACKAGE_FILES = $(sort $(wildcard gpt2tui/*.py gpt2tui/*/*.py gpt2tui/*/*/*.py gpt2tui/assets/* gpt2tui/tui/*.tcss \
                                  gpt2tui/serve/static/* \
                                  kernels/*.py training/*.py))
FILE_LIST := $(VENV)/.package-files

$(FILE_LIST): FORCE
	@mkdir -p $(VENV)
	@echo '$(PACKAGE_FILES)' | cmp -s - $@ || echo '$(PACKAGE_FILES)' > $@

$(STAMP): setup.py pyproject.toml $(CONSTRAINTS) $(FILE_LIST) $(wildcard csrc/*.cpp csrc/*.h csrc/quant/*.cpp csrc/quant/*.h)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip setuptools wheel pybind11 $(TORCH)
	$(PIP) --no-build-isolation $(EDITABLE) -e '.[dev]' $(TORCH)
	@touch $(STAMP)

install: $(STAMP)

chat: $(STAMP)
	$(BIN)/gpt2tui chat $(if $(MODEL),--model $(MODEL))

# The chat page's tests drive Debian's chromium: installed here when missing and apt-get can (as root, or sudo -n).
browser:
	@sh tools/ensure_chromium.sh

test: $(STAMP) browser
	$(BIN)/python -m pytest -q tests

# The tokenizer tests against the C++ encoder built with AddressSanitizer and UBSan; any report fails the run.
# The editable install's extension is the one in gpt2tui/ (its link tree links to it), so the normal build is
# restored there afterwards, whatever the outcome.
SAN_FLAGS := -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer -g
test-asan: $(STAMP)
	CFLAGS="$(SAN_FLAGS)" LDFLAGS="$(SAN_FLAGS)" $(BIN)/python setup.py -q build_ext --inplace --force --build-temp build/asan
	LD_PRELOAD="$$(gcc -print-file-name=libasan.so) $$(gcc -print-file-name=libubsan.so)" \
	ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 PYTHONMALLOC=malloc \
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/csrc tests/gpt2tui/test_tokenizer.py; \
	status=$$?; $(BIN)/python setup.py -q build_ext --inplace --force; exit $$status

bench: $(STAMP)
	$(BIN)/python -m pytest -q benchmarks --benchmark-only --benchmark-columns=min,median,mean,rounds

# On a GPU machine (no network there): its system Python already has torch, triton, transformers and pytest, so
# install this checkout into it without dependencies, then run the CUDA tests (gpu-test), the benchmarks (the 124M
# training step first), a profile of where the attention spends its GPU time, and the decode settings' sweep
# (gpu-bench). BENCH_JSON=path keeps the benchmarks' figures;
# LOG_DIR=dir writes each step's output to dir/<step>.log as it runs (a run cut short by a time limit keeps what the
# finished steps printed) and ends with each log's last lines.
.PHONY: gpu-test gpu-bench gpu-install
log = $(if $(LOG_DIR),> $(LOG_DIR)/$(1).log 2>&1)
logs_tail = $(if $(LOG_DIR),for f in $(1); do echo "== $$f"; tail -n 4 $(LOG_DIR)/$$f.log; done;)

# -k: the benchmarks run even when a test failed.
gpu-check:
	$(MAKE) -k gpu-test gpu-bench

# A regular install: it needs no particular setuptools, and from the repository root gpt2tui's package path reaches the
# installed gpt2tui.kernels (gpt2tui/__init__.py says how).
gpu-install:
	$(PYTHON) -m pip install -q --no-build-isolation --no-deps .
	$(if $(LOG_DIR),mkdir -p $(LOG_DIR))

# The files outside tests/kernels with CUDA tests: only they are collected there, since the GPU machine lacks most of
# the other tests' packages (Textual, FastAPI, prompt_toolkit, lm-eval...), whose imports would stop collection.
GPU_TESTS = $(shell grep -rl 'mark\.gpu' tests --include='test_*.py' | grep -v '^tests/kernels/')

gpu-test: gpu-install
	@# Every step runs even if an earlier one fails; the exit says.
	status=0; \
	$(PYTHON) -m pytest -q tests/kernels $(call log,kernels) || status=1; \
	GPT2TUI_TRITON_AUTOTUNE=0 $(PYTHON) -m pytest -q -m gpu $(GPU_TESTS) $(call log,gpu-marked) \
		|| [ $$? -eq 5 ] || status=1; \
	$(call logs_tail,kernels gpu-marked) exit $$status

gpu-bench: gpu-install
	@# Every step runs even if an earlier one fails (a failing benchmark must not hide the others' figures). The most
	@# telling figures come first, so a run cut short by a time limit keeps those: the 124M training step (compiled and
	@# eager, ours and SDPA), then the attention alone, then generation.
	status=0; \
	$(PYTHON) -m pytest -q -m gpu benchmarks/bench_train.py --benchmark-columns=min,median,mean,rounds \
		$(if $(BENCH_JSON),--benchmark-json=$(basename $(BENCH_JSON))-train.json) $(call log,bench-train) || status=1; \
	$(PYTHON) -m pytest -q benchmarks/bench_attention.py --benchmark-columns=min,median,mean,rounds \
		$(if $(BENCH_JSON),--benchmark-json=$(BENCH_JSON)) $(call log,bench-attention) || status=1; \
	$(PYTHON) -m pytest -q -m gpu benchmarks/bench_generate.py --benchmark-columns=min,median,mean,rounds \
		$(if $(BENCH_JSON),--benchmark-json=$(basename $(BENCH_JSON))-generate.json) $(call log,bench-generate) \
		|| status=1; \
	BENCH_BATCHES=1,4,16 $(PYTHON) -m pytest -q -s -m gpu benchmarks/bench_inference.py --benchmark-columns=median \
		$(if $(BENCH_JSON),--benchmark-json=$(basename $(BENCH_JSON))-inference.json) $(call log,bench-inference) \
		|| status=1; \
	$(PYTHON) benchmarks/profile_attention.py $(call log,profile-attention) || status=1; \
	$(PYTHON) benchmarks/tune_decode.py $(if $(BENCH_JSON),--json $(basename $(BENCH_JSON))-tune-decode.json) \
		$(call log,tune-decode) || status=1; \
	$(call logs_tail,bench-train bench-attention bench-generate bench-inference profile-attention tune-decode) \
		exit $$status

# The newest versions of everything but torch, in a venv of their own (a regular install, so .venv and its link tree
# are left alone): the suite passes there and constraints.txt is rewritten from that venv, or it fails and the
# constraints stay as they are, and the failing tests are named.
upgrade-deps:
	$(PYTHON) tools/upgrade_deps.py --torch $(TORCH) --constraints $(CONSTRAINTS)

# Removing build/ removes the editable install's link tree, so the stamp goes too.
clean:
	rm -rf build *.egg-info gpt2tui/*.so .pytest_cache .benchmarks $(STAMP)
