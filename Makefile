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
TOOLS_PY  := $(QGPU_CACHE)/tools-venv/bin/python3
QEMU_SRC  := $(QGPU_CACHE)/qemu-src
QEMU_OBJ  := $(QGPU_CACHE)/qemu-build
QEMU_BIN  := $(BUILD)/bin/qemu-system-x86_64
STAMPS    := $(QGPU_CACHE)/stamps


PYTEST_ARGS ?=

.PHONY: help
help: ## List the targets
	@echo "qgpu make targets (QGPU_CACHE=$(QGPU_CACHE)):"
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | \
		awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

# ---- host setup -----------------------------------------------------------

.PHONY: deps
deps: ## Install the Debian packages the project needs (apt; root or sudo)
	@scripts/install-host-deps.sh

$(TOOLS_PY):
	@scripts/install-host-deps.sh
	@echo "make: creating $(QGPU_CACHE)/tools-venv (meson, pycotap for QEMU's configure)"
	python3 -m venv $(QGPU_CACHE)/tools-venv
	$(TOOLS_PY) -m pip install -q --disable-pip-version-check meson==1.5.2 pycotap==1.3.1

# A stamp, not $(PY): that is a symlink to the system's interpreter, and
# touching it would change the interpreter's mtime (and with it every QEMU
# build step that lists the interpreter as an input).
$(VENV_STAMP): orchestrator/pyproject.toml
	@scripts/install-host-deps.sh
	@echo "make: creating $(VENV) (pytest, qemu.qmp, pexpect, paramiko, mypy, ruff; orchestrator in editable mode)"
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e 'orchestrator[dev]'
	@touch $@

.PHONY: venv
venv: $(VENV_STAMP) ## Create build/venv with the orchestrator and test tools

# ---- QEMU with the qgpu device ------------------------------------------------

$(STAMPS)/qemu-src: qemu-device/scripts/fetch-qemu-source.sh
	@scripts/install-host-deps.sh
	@qemu-device/scripts/fetch-qemu-source.sh $(QGPU_CACHE)/downloads $(QEMU_SRC)
	@mkdir -p $(STAMPS) && touch $@

.PHONY: qemu
qemu: $(STAMPS)/qemu-src $(TOOLS_PY) ## Build qemu-system-x86_64 with qgpu -> build/bin/
	@scripts/install-host-deps.sh
	@qemu-device/scripts/overlay-qgpu.sh $(QEMU_SRC)
	@qemu-device/scripts/build-qemu.sh $(QEMU_SRC) $(QEMU_OBJ) $(TOOLS_PY)
	@mkdir -p $(BUILD)/bin
	@ln -sfn $(QEMU_OBJ)/qemu-system-x86_64 $(QEMU_BIN)
	@echo "make: $(QEMU_BIN) is ready"

.PHONY: demo
demo: qemu image venv ## The main job: build what is missing, boot the guest, show DMA + mmap from both sides
	$(VENV)/bin/qgpu demo

.PHONY: demo-device
demo-device: qemu venv ## The device alone over qtest (no guest kernel): DMA, MSI-X, stats, trace
	$(PY) -m qgpu.smoke

# ---- guest side: driver, image ------------------------------------------------

GUEST_OUT := $(BUILD)/guest

.PHONY: driver
driver: ## Build the qgpu kernel module and guest tools against the guest kernel -> build/guest/
	@scripts/install-host-deps.sh
	@abi=$$(scripts/guest-kernel-abi.sh); \
	echo "make: building the driver for Linux $$abi"; \
	$(MAKE) --no-print-directory -C guest-driver KDIR=/usr/src/linux-headers-$$abi OUT=$(GUEST_OUT)

.PHONY: image
image: driver ## Guest kernel + initramfs with driver, tools, SSH -> build/images/
	@$(MAKE) --no-print-directory -C images image OUT=$(BUILD)/images GUEST=$(GUEST_OUT) QEMU=$(QEMU_BIN)

.PHONY: boot-smoke
boot-smoke: qemu image ## Boot the guest in each DMA mode and check it comes up with the driver
	@$(MAKE) --no-print-directory -C images boot-smoke OUT=$(BUILD)/images GUEST=$(GUEST_OUT) QEMU=$(QEMU_BIN)

.PHONY: boot-bench
boot-bench: qemu image ## Boot-to-ready-shell times (benchmark)
	@$(MAKE) --no-print-directory -C images boot-bench OUT=$(BUILD)/images GUEST=$(GUEST_OUT) QEMU=$(QEMU_BIN)

# ---- tests and benchmarks -------------------------------------------------------

.PHONY: test-device
test-device: qemu venv ## Device-level tests over qtest (no guest kernel)
	$(PY) -m pytest tests/device $(PYTEST_ARGS)

.PHONY: lint
lint: venv ## ruff and mypy --strict on the orchestrator and tests
	$(VENV)/bin/ruff check orchestrator tests
	$(VENV)/bin/mypy orchestrator/src tests

.PHONY: test-e2e
test-e2e: qemu image venv ## End-to-end tests: booted guests in every DMA mode
	$(PY) -m pytest tests/e2e $(PYTEST_ARGS)

.PHONY: test
test: qemu image venv ## Everything CI runs: lint, then all test suites
	$(MAKE) --no-print-directory lint
	$(PY) -m pytest tests $(PYTEST_ARGS)

.PHONY: bench
bench: qemu image venv ## Benchmarks: DMA engine vs memcpy and edu; guest boot time; WC VRAM vs RAM writes
	$(PY) -m qgpu.bench
	$(PY) -m qgpu.bench_guest

# ---- housekeeping ---------------------------------------------------------------

.PHONY: clean
clean: ## Remove build/ (venv, links); the QEMU build cache stays
	rm -rf $(BUILD)

.PHONY: distclean
distclean: clean ## Also remove $(QGPU_CACHE): downloads and the QEMU build
	rm -rf $(QGPU_CACHE)
