# qgpu: virtual PCIe GPU for QEMU, its Linux driver, and a Python test rig.
#
# Everything is installed and built by these targets on Debian 12 x86_64;
# `make help` lists them. Downloads and the QEMU build live in $(QGPU_CACHE),
# outside the checkout, so every clone on a machine shares them; build/ holds
# this checkout's venv and stable links to the results.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

QGPU_CACHE ?= $(HOME)/.cache/qgpu
export QGPU_CACHE

TOP       := $(abspath .)
BUILD     := $(TOP)/build
VENV      := $(BUILD)/venv
PY        := $(VENV)/bin/python3
VENV_STAMP := $(VENV)/.installed
empty :=
space := $(empty) $(empty)
TOOLS_VENV := $(QGPU_CACHE)/tools-venv
TOOLS_PY  := $(TOOLS_VENV)/bin/python3
TOOLS_REQS := meson==1.5.2 pycotap==1.3.1
TOOLS_STAMP := $(TOOLS_VENV)/.installed-$(subst ==,-,$(subst $(space),+,$(TOOLS_REQS)))
QEMU_SRC  := $(QGPU_CACHE)/qemu-src
QEMU_OBJ  := $(QGPU_CACHE)/qemu-build
QEMU_BIN  := $(BUILD)/bin/qemu-system-x86_64
QEMU_FUZZ_OBJ := $(QGPU_CACHE)/qemu-build-fuzz
QEMU_SAN_OBJ  := $(QGPU_CACHE)/qemu-build-sanitize
QEMU_SAN_BIN  := $(BUILD)/bin/qemu-system-x86_64-sanitize
QEMU_COV_OBJ  := $(QGPU_CACHE)/qemu-build-coverage
QEMU_COV_BIN  := $(BUILD)/bin/qemu-system-x86_64-coverage
QEMU_FUZZ_BIN := $(BUILD)/bin/qemu-fuzz-x86_64
STAMPS    := $(QGPU_CACHE)/stamps


PYTEST_ARGS ?=

# The guest kernel (build/images/$(KERNEL)): stock = Debian's; qgpu = built here
# with CONFIG_IO_MAPPING; debug = qgpu + KASAN, lockdep, kmemleak, DMA-API debug,
# UBSAN, fault injection (images/build-kernel.sh, cached in $(QGPU_CACHE)).
KERNEL    ?= stock
KERNELS   := stock qgpu debug
# boot-smoke: the DMA modes; boot-bench: boots, mode, vCPUs; boot: mode
MODES     ?= direct swiotlb iommu virtio-iommu
N         ?= 5
MODE      ?= direct
SMP       ?= 2
ifeq ($(filter $(KERNEL),$(KERNELS)),)
$(error KERNEL must be one of: $(KERNELS) (got '$(KERNEL)'))
endif
IMAGES    := $(BUILD)/images

.PHONY: help
help: ## List the targets
	@echo "qgpu make targets (QGPU_CACHE=$(QGPU_CACHE)):"
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | \
		awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

# ---- host setup -----------------------------------------------------------

.PHONY: deps
deps: ## Install the Debian packages the project needs (apt; root or sudo)
	@scripts/install-host-deps.sh

# The tools venv is in the cache, and QEMU's cached builds name its python, so it
# is made with Debian's /usr/bin/python3 (the same path on every Debian 12 host
# and in the container; not whatever python3 comes first on PATH), and it counts
# as made only once its stamp is written, after pip succeeded.
$(TOOLS_STAMP):
	@scripts/install-host-deps.sh
	@echo "make: creating $(TOOLS_VENV) (meson, pycotap for QEMU's configure)"
	/usr/bin/python3 -m venv --clear $(TOOLS_VENV)
	$(TOOLS_PY) -m pip install -q --disable-pip-version-check $(TOOLS_REQS)
	@touch $@

# A stamp, not $(PY): that is a symlink to the system's interpreter, and
# touching it would change the interpreter's mtime (and with it every QEMU
# build step that lists the interpreter as an input).
$(VENV_STAMP): orchestrator/pyproject.toml
	@scripts/install-host-deps.sh
	@echo "make: creating $(VENV) (pytest, qemu.qmp, pexpect, paramiko, mypy, ruff, matplotlib; orchestrator in editable mode)"
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e 'orchestrator[dev,bench]'
	@touch $@

.PHONY: venv
venv: $(VENV_STAMP) ## Create build/venv with the orchestrator and test tools

# ---- QEMU with the qgpu device ------------------------------------------------

$(STAMPS)/qemu-src: qemu-device/scripts/fetch-qemu-source.sh
	@scripts/install-host-deps.sh
	@qemu-device/scripts/fetch-qemu-source.sh $(QGPU_CACHE)/downloads $(QEMU_SRC)
	@mkdir -p $(STAMPS) && touch $@

# $(call build-qemu,FLAVOUR,BUILD_DIR,BINARY,LINK): overlay qgpu onto the
# source, build one flavour (qemu-device/scripts/build-qemu.sh) in its own
# directory, and link its BINARY as LINK in build/bin.
define build-qemu
@qemu-device/scripts/overlay-qgpu.sh $(QEMU_SRC)
@qemu-device/scripts/build-qemu.sh $(QEMU_SRC) $(2) $(TOOLS_PY) $(1)
@mkdir -p $(BUILD)/bin
@ln -sfn $(2)/$(3) $(4)
@echo "make: $(4) is ready"
endef

.PHONY: qemu
qemu: $(STAMPS)/qemu-src $(TOOLS_STAMP) ## Build qemu-system-x86_64 with qgpu -> build/bin/
	@scripts/install-host-deps.sh
	$(call build-qemu,plain,$(QEMU_OBJ),qemu-system-x86_64,$(QEMU_BIN))

# QEMU's generic fuzzer (libFuzzer over qtest, ASan + UBSan, clang) with the
# qgpu configurations: its own build directory in $(QGPU_CACHE).
FUZZ_SECONDS ?= 300
FUZZ_JOBS    ?= $(shell nproc)
# wall: FUZZ_SECONDS of wall clock; fuzzer: of one fuzzer's time (split between
# the configurations, FUZZ_JOBS at once: the same fuzzing in less wall clock)
FUZZ_BUDGET  ?= wall
FUZZ_CONFIGS ?=
FUZZ_OUT     := $(BUILD)/fuzz
FUZZ_SEEDS   := qemu-device/tests/fuzz/seeds

.PHONY: qemu-fuzz
qemu-fuzz: $(STAMPS)/qemu-src $(TOOLS_STAMP) ## Build QEMU's fuzz target with qgpu (clang, libFuzzer, ASan, UBSan)
	@scripts/install-host-deps.sh clang-16 libclang-rt-16-dev llvm-16
	$(call build-qemu,fuzz,$(QEMU_FUZZ_OBJ),qemu-fuzz-x86_64,$(QEMU_FUZZ_BIN))

.PHONY: qemu-sanitize
qemu-sanitize: $(STAMPS)/qemu-src $(TOOLS_STAMP) ## Build qemu-system-x86_64 with qgpu under ASan + UBSan (gcc)
	@scripts/install-host-deps.sh
	$(call build-qemu,sanitize,$(QEMU_SAN_OBJ),qemu-system-x86_64,$(QEMU_SAN_BIN))

# Coverage of the device's sources by the device suite: a gcov build of its
# own in $(QGPU_CACHE); make coverage fails below COVERAGE_GOAL % of lines.
COVERAGE_GOAL ?= 90
# 0: the device suite only, without the fuzz corpus.
COVERAGE_CORPUS ?= 1

.PHONY: qemu-coverage
qemu-coverage: $(STAMPS)/qemu-src $(TOOLS_STAMP) ## Build qemu-system-x86_64 with qgpu for gcov (gcc --coverage)
	@scripts/install-host-deps.sh
	$(call build-qemu,coverage,$(QEMU_COV_OBJ),qemu-system-x86_64,$(QEMU_COV_BIN))

.PHONY: coverage
coverage: qemu-coverage venv ## Line and branch coverage of the device's sources by the device suite and the fuzz corpus (gcov), annotated in build/coverage
	@qemu-device/scripts/coverage.sh $(QEMU_COV_OBJ) $(BUILD)/coverage $(COVERAGE_GOAL) -- \
	    sh -c '"$$0" -m pytest tests/device -q --qgpu-qemu $(QEMU_COV_BIN) "$$@"; rc=$$?; \
	        if [ "$(COVERAGE_CORPUS)" = 0 ]; then \
	            echo "make coverage: the fuzz corpus is not replayed (COVERAGE_CORPUS=0)"; \
	        elif [ -x $(QEMU_FUZZ_BIN) ] && [ -d $(FUZZ_OUT)/corpus ]; then \
	            QEMU_SRC=$(QEMU_SRC) qemu-device/scripts/replay-corpus.py $(QEMU_FUZZ_BIN) \
	                $(QEMU_COV_BIN) $(FUZZ_OUT)/corpus || rc=1; \
	        else \
	            echo "make coverage: no fuzz corpus to replay ($(FUZZ_OUT)/corpus; make fuzz makes one)"; \
	        fi; exit $$rc' $(PY) $(PYTEST_ARGS)

.PHONY: fuzz
fuzz: qemu-fuzz ## Fuzz qgpu for FUZZ_SECONDS (default 300), FUZZ_JOBS at once (default: all cores); fails on any crash
	@FUZZ_JOBS=$(FUZZ_JOBS) FUZZ_BUDGET=$(FUZZ_BUDGET) qemu-device/scripts/run-fuzz.sh $(QEMU_FUZZ_BIN) $(FUZZ_SECONDS) $(FUZZ_OUT) \
	    $(FUZZ_SEEDS) $(QEMU_SRC) $(FUZZ_CONFIGS)

.PHONY: demo
demo: qemu image venv ## The main job: build what is missing, boot the guest, show DMA + mmap from both sides
	$(VENV)/bin/qgpu demo --kernel $(KERNEL)

.PHONY: demo-device
demo-device: qemu venv ## The device alone over qtest (no guest kernel): DMA, MSI-X, stats, trace
	$(PY) -m qgpu.tools.demo_device

# ---- guest side: kernel, driver, image -------------------------------------------

GUEST_OUT := $(BUILD)/guest/$(KERNEL)

.PHONY: kernel
kernel: ## Fetch (stock) or build (qgpu, debug) the guest kernel KERNEL -> build/images/KERNEL/
	@$(MAKE) --no-print-directory -C images kernel KERNEL=$(KERNEL) OUT=$(IMAGES)/$(KERNEL)

.PHONY: driver
driver: kernel ## Build qgpu.ko (and the test canary) for KERNEL, and the guest tools -> build/guest/KERNEL/
	@kdir=$$(readlink -f $(IMAGES)/$(KERNEL)/kernel-kdir); \
	echo "make: the driver for Linux $$(cat $(IMAGES)/$(KERNEL)/kernel-abi) ($(KERNEL))"; \
	scripts/cached-driver.sh "$$kdir" $(GUEST_OUT) -- \
	    $(MAKE) --no-print-directory -C guest-driver KDIR=$$kdir OUT=$(GUEST_OUT)

.PHONY: image
image: driver ## Guest kernel + initramfs with driver, tools, SSH for KERNEL -> build/images/KERNEL/
	@$(MAKE) --no-print-directory -C images initramfs KERNEL=$(KERNEL) OUT=$(IMAGES)/$(KERNEL) GUEST=$(GUEST_OUT)

.PHONY: images
images: ## The images of every kernel (stock, qgpu, debug): what make test needs
	@for k in $(KERNELS); do $(MAKE) --no-print-directory image KERNEL=$$k || exit 1; done

.PHONY: boot-smoke
boot-smoke: qemu image venv ## Boot the guest (KERNEL) in each of MODES and run its boot check (driver bound, network, SSH)
	@for mode in $(MODES); do \
	    echo "boot-smoke: $(KERNEL) kernel, $$mode"; \
	    QGPU_QEMU=$(QEMU_BIN) $(VENV)/bin/qgpu run --kernel $(KERNEL) --mode $$mode \
	        -- qgpu-boot-check || exit 1; \
	done; echo "boot-smoke: PASS ($(MODES))"

.PHONY: boot-bench
boot-bench: qemu image venv ## Boot-to-ready-shell times of KERNEL: N boots (default 5) in MODE with SMP vCPUs
	QGPU_QEMU=$(QEMU_BIN) $(PY) -m qgpu.tools.bench_boot --kernel $(KERNEL) -n $(N) \
	    --mode $(MODE) --smp $(SMP)

.PHONY: boot
boot: qemu image venv ## An interactive guest (KERNEL, MODE): its serial console on this terminal ('exit' powers off)
	QGPU_QEMU=$(QEMU_BIN) $(VENV)/bin/qgpu boot --kernel $(KERNEL) --mode $(MODE)

# ---- tests and benchmarks -------------------------------------------------------

# QEMU_SANITIZE=1: against the ASan + UBSan build; a test fails on any report
# (tests/device/conftest.py reads them from QEMU's log).
QEMU_SANITIZE ?= 0
ifeq ($(QEMU_SANITIZE),1)
TEST_DEVICE_QEMU := qemu-sanitize
TEST_DEVICE_RUN  := ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
                    UBSAN_OPTIONS=print_stacktrace=1 \
                    $(PY) -m pytest tests/device --qgpu-qemu $(QEMU_SAN_BIN)
else
TEST_DEVICE_QEMU := qemu
TEST_DEVICE_RUN  := $(PY) -m pytest tests/device
endif

.PHONY: test-device
test-device: $(TEST_DEVICE_QEMU) venv ## Device-level tests over qtest (no guest kernel); QEMU_SANITIZE=1: under ASan + UBSan
	$(TEST_DEVICE_RUN) $(PYTEST_ARGS)

.PHONY: lint
lint: venv ## ruff and mypy --strict on the orchestrator and tests
	$(VENV)/bin/ruff check orchestrator tests examples
	$(VENV)/bin/mypy orchestrator/src tests examples/hello-qgpu/tests

.PHONY: test-e2e
test-e2e: qemu image venv ## End-to-end tests on KERNEL: booted guests in every DMA mode
	$(PY) -m pytest tests/e2e --qgpu-kernel $(KERNEL) $(PYTEST_ARGS)

# What `make test` runs: lint; everything on the stock kernel; the whole
# end-to-end suite again on debug, where any sanitizer report fails a test; on
# qgpu, the tests of the io_mapping_map_user() path and of the peer-to-peer
# topology (PCI_P2PDMA, which Debian's kernel lacks); the example project from
# the wheel (after the debug suite); the device suite against
# an ASan + UBSan QEMU; and TEST_FUZZ_SECONDS (0: none) of the qgpu fuzzer.
# Every run happens even if one fails.
# The debug suite keeps about one core busy (one TCG guest at a time), so by
# default the rest runs beside it in a second lane -- stock suite, qgpu
# suite, debug detector tests, then the sanitizer build and device suite (one
# ninja job) -- in a process group of its own (an interrupt is passed on to
# it), its output kept in logs that are shown when it ends; the first lane
# goes on with the example project and the fuzzer: TEST_FUZZ_SECONDS of one
# fuzzer's time, split between its configurations, one job (and ninja job) at
# a time while the second lane still runs, else one per core -- on a warm
# run the lanes end within a minute of each other, and the fuzzer's four
# minutes alone were the run's tail (TEST_PARALLEL=0: one after the other,
# all on the terminal). A fuzzer that starts with one job runs one per core
# (at most one per configuration) from when the second lane ends
# (run-fuzz.sh's FUZZ_MORE_JOBS).
# Each suite keeps its failure artifacts in build/artifacts/KERNEL.
TEST_PARALLEL ?= 1
TEST_FUZZ_SECONDS ?= 240
# The debug suites are CI's long poles, so they run two DMA modes: direct and
# intel-iommu, the two different sets of driver paths (mmap of buffer objects
# differs, IOVAs, IOMMU faults). swiotlb=force runs the direct mode's driver
# code again with bounce buffers, and runs on stock with virtio-iommu; on a
# machine where the debug kernel runs 2.5x slower than where the 30-minute
# warm budget was first met, three modes took 51 minutes.
# TEST_DEBUG_MODES=direct,swiotlb,iommu adds it back. The detector and kernel
# fault-injection tests run in the second lane, on a debug guest of their own,
# after the stock suite.
TEST_DEBUG_MODES ?= direct,iommu
TEST_DEBUG_SIDE  := tests/e2e/test_detectors.py tests/e2e/test_kernel_faults.py
TEST_LOGS     := $(BUILD)/logs
TEST_REPORTS  := $(BUILD)/reports

# The example project (examples/hello-qgpu) as its users run it: the package
# built into a wheel and installed into a fresh venv outside the checkout, the
# project copied out too, on each of EXAMPLE_KERNELS (a different kernel is
# just --qgpu-kernel=DIR) in EXAMPLE_MODES.
EXAMPLE_KERNELS ?= stock qgpu
EXAMPLE_MODES   ?= direct,iommu
# EXAMPLE_PYTEST_ARGS, not PYTEST_ARGS: the example is another project (its own
# tests, no pytest-xdist in its venv).
EXAMPLE_PYTEST_ARGS ?=
example_suite = scripts/test-example.sh $(PY) $(QEMU_BIN) $(IMAGES) $(BUILD)/artifacts/example \
    $(TEST_REPORTS) $(EXAMPLE_KERNELS) -- --qgpu-modes=$(EXAMPLE_MODES) $(EXAMPLE_PYTEST_ARGS)

.PHONY: wheel
wheel: venv ## The qgpu package (rig, pytest plugin, ABI header) as a wheel in build/wheel/
	rm -rf $(BUILD)/wheel orchestrator/build   # setuptools would pack a stale build/lib
	$(PY) -m pip wheel --quiet --no-deps --no-build-isolation -w $(BUILD)/wheel ./orchestrator
	@ls $(BUILD)/wheel/*.whl

.PHONY: test-example
test-example: qemu venv ## The example out-of-tree driver project's tests, from the built wheel in a fresh venv
	@for k in $(EXAMPLE_KERNELS); do $(MAKE) --no-print-directory image KERNEL=$$k; done
	$(example_suite)

.PHONY: test
test: qemu images venv ## Everything CI runs: lint, the suites on the stock, debug and qgpu kernels, the example project, sanitizers, fuzzing
	$(MAKE) --no-print-directory lint
	@status=0; lane=; mkdir -p $(TEST_LOGS); \
	stock_suite() { $(PY) -m pytest tests --qgpu-kernel stock \
	    --qgpu-artifacts $(BUILD)/artifacts/stock --junitxml=$(TEST_REPORTS)/stock.xml \
	    $(PYTEST_ARGS); }; \
	qgpu_suite() { $(PY) -m pytest tests/e2e/test_io_mapping.py tests/e2e/test_p2p.py \
	    --qgpu-kernel qgpu \
	    --qgpu-artifacts $(BUILD)/artifacts/qgpu --junitxml=$(TEST_REPORTS)/qgpu.xml \
	    $(PYTEST_ARGS); }; \
	debug_suite() { $(PY) -m pytest "$$@" --qgpu-kernel debug \
	    $(if $(TEST_DEBUG_MODES),--qgpu-modes $(TEST_DEBUG_MODES)) $(PYTEST_ARGS); }; \
	debug_side_suite() { debug_suite $(TEST_DEBUG_SIDE) \
	    --qgpu-artifacts $(BUILD)/artifacts/debug-side \
	    --junitxml=$(TEST_REPORTS)/debug-side.xml; }; \
	sanitizers() { NINJA_JOBS=$${1:-} $(MAKE) --no-print-directory \
	        test-device QEMU_SANITIZE=1 \
	        PYTEST_ARGS="$(PYTEST_ARGS) --junitxml=$(TEST_REPORTS)/sanitizers.xml"; }; \
	fuzzing() { [ "$(TEST_FUZZ_SECONDS)" = 0 ] && return; \
	    echo "make: $(TEST_FUZZ_SECONDS) s of one fuzzer's time, up to $${1:-$(FUZZ_JOBS)}" \
	         "fuzzer(s) at a time$${2:+ (up to $(FUZZ_JOBS) once the second lane has ended)}"; \
	    NINJA_JOBS=$${1:-} FUZZ_MORE_JOBS=$${2:+$$2:$(FUZZ_JOBS)} \
	        $(MAKE) --no-print-directory fuzz FUZZ_BUDGET=fuzzer \
	        FUZZ_SECONDS=$(TEST_FUZZ_SECONDS) FUZZ_JOBS=$${1:-$(FUZZ_JOBS)}; }; \
	run_logged() { local name=$$1; shift; \
	    if "$$@" > $(TEST_LOGS)/test-$$name.log 2>&1; then rc=0; else rc=$$?; fi; \
	    echo $$rc > $(TEST_LOGS)/test-$$name.rc; }; \
	show_logged() { echo "make: ---- $$1 ($(TEST_LOGS)/test-$$1.log) ----"; \
	    cat $(TEST_LOGS)/test-$$1.log; \
	    [ "$$(cat $(TEST_LOGS)/test-$$1.rc 2>/dev/null)" = 0 ] || status=1; }; \
	if [ "$(TEST_PARALLEL)" = 1 ]; then \
	    echo "make: beside the debug suite (and the example project and the fuzzer after" \
	         "it): the stock suite, the io_mapping tests on the qgpu kernel, the debug" \
	         "kernel's detector and fault-injection tests, then the sanitizer device suite;" \
	         "output in" \
	         "$(TEST_LOGS)/test-{stock,qgpu,debug-side,sanitizers}.log (shown when they end)"; \
	    rm -f $(TEST_LOGS)/test-{stock,qgpu,debug-side,sanitizers}.rc; \
	    set -m; \
	    ( run_logged stock stock_suite; run_logged qgpu qgpu_suite; \
	      run_logged debug-side debug_side_suite; \
	      run_logged sanitizers sanitizers 1 ) & lane=$$!; \
	    set +m; \
	    trap 'kill -INT -- -$$lane 2>/dev/null; wait $$lane; exit 130' INT TERM; \
	else \
	    echo "make: device + end-to-end suites, stock kernel"; \
	    stock_suite || status=1; \
	fi; \
	echo "make: end-to-end suite, debug kernel"; \
	debug_suite tests/e2e $(addprefix --ignore=,$(TEST_DEBUG_SIDE)) \
	    --qgpu-artifacts $(BUILD)/artifacts/debug \
	    --junitxml=$(TEST_REPORTS)/debug.xml || status=1; \
	echo "make: the example project, from the wheel in a fresh venv"; \
	$(example_suite) || status=1; \
	if [ -n "$$lane" ]; then \
	    if [ -e $(TEST_LOGS)/test-sanitizers.rc ]; then fuzzing; \
	    else fuzzing 1 $(TEST_LOGS)/test-sanitizers.rc; fi \
	        || status=1; \
	    echo "make: waiting for the second lane"; wait $$lane || true; \
	    show_logged stock; show_logged qgpu; show_logged debug-side; show_logged sanitizers; \
	else \
	    echo "make: io_mapping tests, qgpu kernel"; \
	    qgpu_suite || status=1; \
	    echo "make: detector and kernel fault-injection tests, debug kernel"; \
	    debug_side_suite || status=1; \
	    echo "make: device suite under ASan + UBSan"; \
	    sanitizers || status=1; \
	    fuzzing || status=1; \
	fi; \
	echo "make: JUnit XML reports in $(TEST_REPORTS)/; artifact bundles of failed tests" \
	     "in $(BUILD)/artifacts/{stock,debug,debug-side,qgpu,example}/"; \
	exit $$status

# make bench writes $(BENCH_OUT)/results.json and report.html; BENCH_ARGS are
# qgpu.tools.bench_all's options (--only engine,driver --modes direct --quick ...).
BENCH_OUT  ?= $(BUILD)/bench
BENCH_ARGS ?=

.PHONY: bench
bench: qemu venv ## Benchmarks (engine vs host memcpy; DMA through the driver per DMA mode vs guest memcpy; boot; restore) -> build/bench/report.html + results.json
	@# the stock and qgpu images (the sections' default kernels), not the debug one
	@for k in stock qgpu; do $(MAKE) --no-print-directory image KERNEL=$$k || exit 1; done
	$(PY) -m qgpu.tools.bench_all --out $(BENCH_OUT) $(BENCH_ARGS)

.PHONY: bench-compare
bench-compare: venv ## Ratios between two bench results: make bench-compare OLD=old/results.json NEW=build/bench/results.json [COMPARE_ARGS=--all]
	@if [ -z "$(OLD)" ]; then \
	    echo "make bench-compare: say which results to compare: OLD=path/to/results.json" \
	         "[NEW=path, default $(BENCH_OUT)/results.json]" >&2; exit 2; fi
	$(PY) -m qgpu.tools.bench_compare $(OLD) $(or $(NEW),$(BENCH_OUT)/results.json) $(COMPARE_ARGS)

# ---- housekeeping ---------------------------------------------------------------

.PHONY: clean
clean: ## Remove build/ (venv, links); the QEMU build cache stays
	rm -rf $(BUILD)

.PHONY: distclean
distclean: clean ## Also remove $(QGPU_CACHE): downloads, the QEMU and kernel builds
	rm -rf $(QGPU_CACHE)
