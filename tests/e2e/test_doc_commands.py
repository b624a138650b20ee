"""Issue 15, part 6: the shell commands in the README and the docs run as written.

Every fenced block tagged `sh` (also `bash`, `shell`, `console`) in README.md, docs/*.md and the
distributions' and test folders' README.md files is extracted. A command is run here only when it
starts with one of RUNNABLE (commands that touch nothing outside the test: jobctl against the test's
server, `python -m jobcore`, openssl on the checked-in certificates, `make demo`, the benches' quick
forms): the block's runnable commands as one bash script, in order, against a real `jobserver` on
127.0.0.1 (the docs' `localhost:50051` is the test server through $JOBCTL_SERVER; `jobctl` is on
PATH). Every other command — one that installs, writes outside the checkout (/etc, /opt, /tmp/pki),
binds fixed ports, needs systemd or tools not installed — is never run: it is listed in ELSEWHERE
with the test that covers it, or why none can. A command in neither list fails
`test_every_doc_command_is_run_or_accounted_for`, and its block is not run at all.

A command passes when it exits with the status its comment states (`exits 3`), else 0, and writes no
traceback. The README's and docs/jobclient.md's Python examples run too (`localhost:50051` replaced by
the test server, jobcore's state directory by a temporary one).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from e2e_support import BIN, CERTS, REPO, ServerProcess, needs_root

pytestmark = needs_root

DOCS = sorted(
    [
        REPO / "README.md",
        *REPO.glob("docs/*.md"),
        *REPO.glob("packages/*/README.md"),
        *REPO.glob("tests/*/README.md"),
    ]
)
_FENCE = re.compile(r"^```(\w*)\s*$")
SHELL_TAGS = {"sh", "bash", "shell", "console"}

#: Commands this test does not run, by the start of their text: each names the test that covers it,
#: or says why none can. (Long-running, recursive, machine-changing or measuring commands.)
ELSEWHERE: dict[str, str] = {
    "make test ": (
        "recursive (the suite itself); tests/test_workspace.py::test_ci_runs_exactly_the_readme_test_command"
    ),
    "make certs": (
        "rewrites the checked-in certificates: not run by any test (certs/generate.sh is run by hand)"
    ),
    ".venv/bin/jobserver --listen localhost:50051": (
        "binds the fixed port 50051 and /var/lib/jobworker; the same flags on a free port: "
        "tests/e2e/conftest.py::start_server, used by tests/e2e/test_jobctl.py::"
        "test_start_status_follow_stop_list_as_alice"
    ),
    "make bench": "a measurement (minutes), not a test: bench/run_all.py",
    ".venv/bin/python bench/run_all.py --quick": "a measurement (about a minute, starts sshd), not a test",
    ".venv/bin/python bench/run_all.py --markdown": "a measurement (minutes), not a test",
    ".venv/bin/python bench/cli_startup.py --runs 20 --server": (
        "a measurement that starts sshd and needs the replaced source unpacked; its no-server form runs here"
    ),
    ".venv/bin/python bench/start_ab.py --before": (
        "a measurement (minutes) against another jobcore unpacked by hand (git archive), not a test"
    ),
    ".venv/bin/python bench/cgroup_join.py": "a measurement (half a minute, root, cgroup v1), not a test",
    ".venv/bin/python bench/profile_server.py ab --before": (
        "a measurement (minutes, two servers) against another tree unpacked by hand (git archive), not a test"
    ),
    "git archive ": "unpacks an older tree for a measurement's --before (a step of the line after it)",
    ".venv/bin/python tests/vm/run_vm.py": (
        "boots a qemu VM (minutes, not in the host suite): `make test-vm`; the harness itself: "
        "tests/vm/test_run_vm.py"
    ),
    ".venv/bin/pytest ": "runs a test suite: recursive here (each suite is run by `make test-host`)",
    "JOBWORKER_SOAK_SECONDS=": "runs a test suite: tests/e2e/test_soak.py",
    ".venv/bin/ruff ": "the lint, run by `make lint`",
    ".venv/bin/mypy ": "the type check, run by `make lint`",
    # Machine-changing or tool-dependent commands of the operations and packaging docs.
    "chmod 600 certs/": "changes the checked-in keys' mode (the e2e servers use them as they are)",
    "bash certs/generate.sh ": (
        "writes a PKI to a fixed /tmp folder shared on the host; the same issuance in a temporary folder: "
        "tests/test_certificate_script.py::test_a_user_certificate_carries_name_role_and_client_auth_only"
    ),
    "openssl verify -CAfile /tmp/pki/": "needs the /tmp/pki made by the generate.sh commands above",
    "python3 -m venv ": (
        "creates a venv outside the checkout (/opt, /tmp); the same installs in a temporary venv: "
        "tests/test_packaging.py::test_each_distribution_installs_alone_from_its_folder"
    ),
    "/opt/jobworker/venv/bin/": "installs into /opt: a host's deployment, not a test",
    "/tmp/rjw/bin/": (
        "installs into a fixed /tmp venv; the same in a temporary one: "
        "tests/test_packaging.py::test_the_server_wheel_installs_by_name_with_its_siblings_and_runs"
    ),
    "install -m 0644 deploy/": "writes /etc/systemd/system: a host's deployment, not a test",
    "install -d -m 0700 /etc/jobworker": "writes /etc: a host's deployment, not a test",
    "systemctl ": "needs systemd as PID 1 (not here); a fleet of two servers: tests/e2e/test_fleet.py",
    "python3 -m pip wheel ": (
        "builds wheels into the checkout's dist/; built from copies: "
        "tests/test_packaging.py::test_each_wheel_has_its_name_license_classifiers_and_typed_package"
    ),
    "pip install ./packages/": "installs the distributions (over the editable ones of .venv): a user's step",
    ".venv/bin/jobserver --metrics-listen": "binds fixed ports 50051 and 9464",
    "until curl -sf -o /dev/null http://127.0.0.1:9464/": "needs the server on the fixed port 9464",
    "curl -s http://127.0.0.1:9464/": (
        "needs the server on the fixed port 9464; on a free port: "
        "tests/jobserver/test_operations.py::test_metrics_count_rpcs_by_method_and_code_jobs_and_streamed_bytes"
    ),
    "kill %1": "stops the background server of its block",
    "grpc_health_probe ": (
        "grpc_health_probe is not installed here; the endpoint: "
        "tests/jobserver/test_operations.py::test_plaintext_health_probe_on_its_own_port"
    ),
    "grpcurl ": "grpcurl is not installed here, and it needs a server on the fixed port 50051",
    ".venv/bin/jobserver --health-listen": "binds a fixed socket path and port 50051",
}


def shell_blocks(path: Path) -> Iterator[tuple[int, list[str]]]:
    """(line number, commands) of each shell block; backslash continuations joined."""
    lines = path.read_text().splitlines()
    i = 0
    while i < len(lines):
        fence = _FENCE.match(lines[i])
        if not fence:
            i += 1
            continue
        tag, start = fence.group(1), i + 1
        i += 1
        body: list[str] = []
        while i < len(lines) and not lines[i].startswith("```"):
            body.append(lines[i])
            i += 1
        i += 1
        if tag not in SHELL_TAGS:
            continue
        commands: list[str] = []
        pending = ""
        for line in body:
            if line.rstrip().endswith("\\"):
                pending += line.rstrip()[:-1] + " "
                continue
            text = (pending + line).strip()
            pending = ""
            if text.startswith("$ "):
                text = text[2:]
            if text and not text.startswith("#"):
                commands.append(text)
        yield start, commands


#: Commands this test runs, by the start of their text.
RUNNABLE = (
    "jobctl ",
    "id=$(jobctl ",
    ".venv/bin/python -m jobcore run ",
    ".venv/bin/python -m jobcore probe",
    "openssl x509 -in certs/",
    "openssl verify -CAfile certs/",
    "make demo",
    ".venv/bin/python bench/run_all.py --help",
    ".venv/bin/python bench/cli_startup.py --runs 20 --importtime",
)


def elsewhere(command: str) -> str | None:
    return next((why for prefix, why in ELSEWHERE.items() if command.startswith(prefix)), None)


def runnable(command: str) -> bool:
    return elsewhere(command) is None and command.startswith(RUNNABLE)


def unaccounted(commands: list[str]) -> list[str]:
    return [c for c in commands if elsewhere(c) is None and not runnable(c)]


def all_commands() -> list[tuple[str, int, list[str]]]:
    return [
        (str(path.relative_to(REPO)), line, commands)
        for path in DOCS
        for line, commands in shell_blocks(path)
        if commands
    ]


def test_the_docs_have_shell_examples_to_check() -> None:
    found = {doc for doc, _, _ in all_commands()}
    assert {"README.md", "docs/certificates.md", "packages/jobclient/README.md"} <= found, found


def test_every_doc_command_is_run_or_accounted_for() -> None:
    # Those listed in ELSEWHERE name a test that exists (file, and function if given).
    for why in ELSEWHERE.values():
        for ref in re.findall(r"(tests/[\w/]+\.py)(?:::(\w+))?", why):
            file, function = ref
            text = (REPO / file).read_text()
            if function:
                assert f"def {function}(" in text, f"{file}::{function} does not exist"
    missing = [f"{doc}:{line}: {c}" for doc, line, commands in all_commands() for c in unaccounted(commands)]
    assert missing == [], "doc commands neither run here nor listed in ELSEWHERE:\n" + "\n".join(missing)
    assert any(runnable(c) and c.startswith("jobctl ") for _, _, cs in all_commands() for c in cs)


def _expected_status(command: str) -> int:
    comment = command.partition(" #")[2]
    match = re.search(r"\bexits (\d+)", comment)
    return int(match.group(1)) if match else 0


def _script(commands: list[str]) -> str:
    lines = ["cd " + str(REPO)]
    for n, command in enumerate(commands):
        if not runnable(command):
            continue
        lines.append(command)
        lines.append(f'echo "__STATUS {n} $?" >&2')
    return "\n".join(lines) + "\n"


@pytest.fixture
def server(start_server: Callable[..., ServerProcess]) -> ServerProcess:
    return start_server()


def _env(server: ServerProcess, home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JOBCTL_", "GRPC_"))}
    env.update(
        PATH=f"{BIN}:{env.get('PATH', '/usr/bin:/bin')}",
        JOBCTL_SERVER=server.target,
        JOBCTL_CERTS=str(CERTS),
        JOBCTL_CONFIG=str(home / "no-config.toml"),
    )
    return env


@pytest.mark.parametrize(
    ("doc", "line", "commands"),
    [pytest.param(*block, id=f"{block[0]}:{block[1]}") for block in all_commands()],
)
def test_doc_shell_block_runs_as_written(
    server: ServerProcess, tmp_path: Path, doc: str, line: int, commands: list[str]
) -> None:
    assert unaccounted(commands) == [], f"{doc}:{line}: not run: commands neither runnable nor in ELSEWHERE"
    to_run = [c for c in commands if runnable(c)]
    if not to_run:
        pytest.skip(f"every command of {doc}:{line} is covered elsewhere: " + "; ".join(
            sorted({str(elsewhere(c)) for c in commands})))  # fmt: skip
    done = subprocess.run(
        ["bash", "-c", _script(commands)],
        env=_env(server, tmp_path),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=300,
        check=False,
    )
    err = done.stderr.decode(errors="replace")
    statuses = {int(n): int(rc) for n, rc in re.findall(r"^__STATUS (\d+) (\d+)$", err, re.MULTILINE)}
    for n, command in enumerate(commands):
        if not runnable(command):
            continue
        assert n in statuses, f"{doc}:{line}: `{command}` did not run\n{err[-3000:]}"
        assert statuses[n] == _expected_status(command), (
            f"{doc}:{line}: `{command}` exited {statuses[n]}\n{err[-3000:]}"
        )
    assert "Traceback" not in err, err


PYTHON_EXAMPLES = [("README.md", 0), ("README.md", 1), ("docs/jobclient.md", 0)]


def python_blocks(path: Path) -> list[str]:
    text = path.read_text()
    return re.findall(r"^```python\n(.*?)^```", text, re.MULTILINE | re.DOTALL)


@pytest.mark.parametrize(("doc", "index"), PYTHON_EXAMPLES, ids=[f"{d}#{i}" for d, i in PYTHON_EXAMPLES])
def test_doc_python_example_runs(server: ServerProcess, tmp_path: Path, doc: str, index: int) -> None:
    code = python_blocks(REPO / doc)[index]
    code = code.replace('"localhost:50051"', repr(server.target))
    code = code.replace('"/var/lib/jobworker/jobs"', repr(str(tmp_path / "jobs")))
    done = subprocess.run(
        [sys.executable, "-c", code],
        env=_env(server, tmp_path) | {"JOBCTL_USER": "alice"},  # for Client.from_env()
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")
