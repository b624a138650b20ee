# Remote Job Worker — every set-up step lives here; the README names `make demo` and `make test`.
# The member list comes from workspace.toml (tools/workspace.py), never from a copy in this file.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
MEMBERS := $(shell $(PYTHON) tools/workspace.py paths)
PYPROJECTS := $(addsuffix /pyproject.toml,$(MEMBERS))
# Debian packages the tests and the VM harness need (installed only when missing; needs root).
APT_PACKAGES := stress openssl iproute2 procps qemu-system-x86 busybox-static cpio kmod
PYTEST_ARGS ?=

.PHONY: help demo test test-host test-vm lint system-deps venv proto proto-check bench lock clean certs key-modes check-floors

help:
	@echo "make demo     set everything up, start a jobserver with the checked-in certs and drive it"
	@echo "make test     set everything up and run every test (lint, host suite, cgroup v2 VM suite)"
	@echo "make test-host / test-vm / lint / proto / certs / bench / lock / check-floors / clean"

system-deps: .cache/apt.stamp
.cache/apt.stamp: Makefile
	@mkdir -p .cache
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages: $$missing"; \
	  if [ "$$(id -u)" != 0 ]; then echo "need root to install: $$missing" >&2; exit 1; fi; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi
	@touch $@

venv: $(VENV)/.stamp
$(VENV)/.stamp: requirements/dev.lock $(PYPROJECTS) workspace.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --require-hashes --no-deps -r requirements/dev.lock
	@# The distributions were named jobcore/jobclient/jobserver before (docs/packaging.md): drop those.
	@$(PY) -m pip uninstall -q -y jobcore jobclient jobserver 2>/dev/null || true
	$(PY) -m pip install -q --no-deps --no-build-isolation $(addprefix -e ,$(MEMBERS))
	@touch $@

# git keeps no file modes but the executable bit: the server refuses a private key that others may read.
key-modes:
	@chmod 600 certs/*.key certs/test/*.key

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

test-host: system-deps venv key-modes
	$(VENV)/bin/pytest $(PYTEST_ARGS)

# The cgroup v2 suite: jobcore's tests (contract, real limits, namespaces, whole job cycles) on a real
# cgroup2-only kernel in a qemu VM (tests/vm/README.md). Without qemu it says so and skips, except
# under CI=true, where that is a failure.
# (Pure-Python validation and CLI tests stay on the host: every exec is slow under emulation.)
# From the sandbox's tests, those whose outcome can depend on the cgroup version or the kernel's
# mounts (the rest is the same code on any host, and every exec is slow under emulation).
SANDBOX_VM_TESTS := $(addprefix tests/jobcore/test_sandbox.py::test_,\
	the_job_runs_as_the_given_uid_with_no_groups_and_the_status_says_so \
	without_a_user_the_job_runs_as_the_worker_but_with_no_capability the_hosts_filesystem_is_read_only \
	the_state_directory_and_hidden_paths_are_inaccessible pid_1_is_no_door_to_the_host \
	the_host_cannot_be_renamed_and_cgroup_files_cannot_be_written the_sandbox_keeps_limits_and_stop \
	an_explicit_cwd_is_writable_where_its_user_may_write)
VM_TESTS ?= tests/vm/v2_smoke tests/jobcore/controllers tests/jobcore/test_jobs.py \
	tests/jobcore/test_limits.py tests/jobcore/test_namespaces.py $(SANDBOX_VM_TESTS)
test-vm: system-deps venv key-modes
	$(PY) tests/vm/run_vm.py --unavailable-ok --env JOBCORE_TEST_BIG_OUTPUT=268435456 -- $(VM_TESTS) $(PYTEST_ARGS)

# One suite after the other: side by side (make -j2) halves the time, but the VM then runs slowly
# enough that its loop device fell below what the io.max smoke test needs to show throttling.
test: lint test-host test-vm

demo: system-deps venv key-modes
	$(PY) tools/demo.py

proto: venv
	$(PY) tools/gen_proto.py

certs:
	bash certs/generate.sh

bench: system-deps venv key-modes
	$(PY) bench/run_all.py

lock:
	$(PY) -m pip install -q pip-tools
	$(VENV)/bin/pip-compile --generate-hashes --allow-unsafe --strip-extras -q -o requirements/dev.lock requirements/dev.in

# The lowest versions the distributions claim to work with, installed from the index into a throwaway
# venv, under the three suites (docs/packaging.md). Needs the index, so not part of `make test`; the
# wheel build and install check is (tests/test_packaging.py).
check-floors: system-deps
	$(PYTHON) tools/check_floors.py

clean:
	rm -rf $(VENV) .cache .mypy_cache .pytest_cache .ruff_cache
