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

# Bytecode for the three editable distributions, as a wheel install would have: with
# PYTHONDONTWRITEBYTECODE=1 (set on the build machines) every jobctl, jobserver and launcher process
# otherwise compiles them anew (20-50 ms per jobctl start; docs/benchmarks.md, "jobctl start-up").
# Up-to-date files are skipped; a stale one is only recompiled in memory, never wrong.
venv: $(VENV)/.stamp
	@$(PY) -m compileall -q -j 0 $(addsuffix /src,$(MEMBERS)) >/dev/null
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

# The cgroup v2 suite: on a real cgroup2-only 6.1 kernel in a qemu VM (tests/vm/README.md), the tests
# whose outcome can depend on the cgroup version or the kernel. Without qemu it says so and skips,
# except under CI=true, where that is a failure. Everything here also runs on the host (test-host).
# The VM is emulated (TCG: no usable KVM here), so every exec is many times slower than on the host,
# and whatever is the same code on any kernel stays on the host only:
# * controllers/test_cgroup_v1_layout.py, test_cgroup_v2_fake.py, test_conversions.py: pure Python over
#   fake mount tables and a fake cgroupfs, and value conversions; no kernel involved.
# * from test_jobs.py, the Worker's own logic (output order and bytes, followers, offsets, async
#   readers, exec errors but one, environment, PATH, cwd, list/count/callbacks, the state lock,
#   the output cap, a full state disk, the GiB stream's RSS): the cgroup backend does the same
#   create/attach/destroy for each of them, which the tests kept here prove. Kept: a job's whole
#   cycle, a failed exec's clean-up, what the cgroup kill and the stop path do (grandchildren,
#   SIGTERM then SIGKILL, setsid escapees), lost shims and re-attach (the backend's handle from
#   the state), the launcher's replacement (the v2 supervisor leaf) and a start cut short.
# * From the sandbox's tests, those whose outcome can depend on the cgroup version or the kernel's
#   mounts.
# test_limits.py, test_namespaces.py and the controllers' contract and real-limit tests run whole.
JOBS_VM_TESTS := $(addprefix tests/jobcore/test_jobs.py::test_,\
	output_and_exit_code_are_recorded a_missing_command_fails_to_start_with_the_os_error \
	a_grandchild_that_outlives_the_command_is_killed_and_nothing_is_left \
	stop_sends_sigterm_and_the_command_may_exit_gracefully \
	stop_kills_a_command_that_ignores_sigterm_after_the_grace_period stop_kills_setsid_escapees \
	a_job_whose_shim_vanished_is_lost_and_its_processes_are_killed \
	jobs_survive_the_death_of_the_starting_process_and_a_new_worker_reattaches \
	jobs_whose_shims_died_while_no_worker_ran_are_lost_on_restart \
	a_killed_launcher_is_replaced_and_running_jobs_are_unaffected \
	a_start_cut_short_before_its_job_existed_leaves_no_cgroup_behind)
SANDBOX_VM_TESTS := $(addprefix tests/jobcore/test_sandbox.py::test_,\
	the_job_runs_as_the_given_uid_with_no_groups_and_the_status_says_so \
	without_a_user_the_job_runs_as_the_worker_but_with_no_capability the_hosts_filesystem_is_read_only \
	the_state_directory_and_hidden_paths_are_inaccessible pid_1_is_no_door_to_the_host \
	the_host_cannot_be_renamed_and_cgroup_files_cannot_be_written the_sandbox_keeps_limits_and_stop \
	an_explicit_cwd_is_writable_where_its_user_may_write)
VM_TESTS ?= tests/vm/v2_smoke tests/jobcore/controllers/test_contract.py \
	tests/jobcore/controllers/test_limits_real.py $(JOBS_VM_TESTS) tests/jobcore/test_limits.py \
	tests/jobcore/test_namespaces.py $(SANDBOX_VM_TESTS)
# --timeout bounds a hung VM; it is no speed check (on a loaded machine the suite may take 10 minutes).
test-vm: system-deps venv key-modes
	$(PY) tests/vm/run_vm.py --unavailable-ok --timeout 1800 --env JOBCORE_TEST_BIG_OUTPUT=268435456 -- \
		$(VM_TESTS) $(PYTEST_ARGS)

# Lint first (it fails fast), then the host and the VM suites side by side (-O: each one's output
# in one piece when it ends). The VM's timing-sensitive checks are ratios or one-sided bounds (the
# io.max smoke test sets its limit from the loop device's measured rate), so a VM slowed by the
# host suite is no failure.
test: lint
	@$(MAKE) --no-print-directory -j2 -O test-host test-vm

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
