"""What jobctl imports (issue 14): a CLI started for every command must not load what it does not use.

Each test runs a fresh interpreter and compares `sys.modules` against an allow-list, so that a new
`import asyncio` (or attrs, grpc, cattrs, importlib.metadata...) on the CLI path fails here, with the
module named. Timing is not asserted (bench/cli_startup.py measures it); the module set is what makes
the time, and it does not depend on the machine's load.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest
from fake_jobworker import CERTS, FakeServer

#: Everything `import jobclient.cli` may add to a bare interpreter: argparse and what it needs, the
#: small jobclient modules that parse options and settings. No grpc, protobuf, attrs, cattrs, asyncio,
#: ssl, pathlib, importlib.metadata, json or tomllib.
IMPORT_ALLOWED = {
    "__future__",
    "_collections",
    "_functools",
    "_operator",
    "_sre",
    "_typing",
    "argparse",
    "collections",
    "collections.abc",
    "contextlib",
    "copyreg",
    "enum",
    "functools",
    "gettext",
    "importlib",
    "importlib._bootstrap",
    "importlib._bootstrap_external",
    "itertools",
    "keyword",
    "operator",
    "re",
    "re._casefix",
    "re._compiler",
    "re._constants",
    "re._parser",
    "reprlib",
    "signal",
    "types",
    "typing",
    "typing.io",
    "typing.re",
    "warnings",
    "jobclient",
    "jobclient._version",
    "jobclient.cli",
    "jobclient.cli_removal",  # rm and prune: argparse only until they run
    "jobclient.config",
    "jobclient.errors",
    "jobclient.units",
}
#: `jobctl --help` also sizes its text to the terminal (argparse uses shutil.get_terminal_size).
HELP_ALSO_ALLOWED = {"shutil", "fnmatch", "posixpath", "errno", "zlib", "bz2", "_bz2", "_compression",
                     "lzma", "_lzma", "pwd", "grp", "textwrap", "_locale", "locale", "encodings.idna",
                     "stringprep", "unicodedata"}  # fmt: skip
#: Never on the `start` path: jobctl's start needs the SDK, grpc and the generated code, but not the
#: JSON converter (cattrs), the package metadata machinery, TOML without a config file, or pathlib
#: (credentials and config use os.path: nothing else there imports pathlib).
START_FORBIDDEN = {
    "cattrs",
    "importlib.metadata",
    "jobclient._json",
    "tomllib",
    "email",
    "zipfile",
    "pathlib",
}

_PROBE = """
import sys
before = set(sys.modules)
{body}
loaded = sorted(set(sys.modules) - before)
import json
sys.stderr.write("MODULES " + json.dumps(loaded) + "\\n")
"""


def _loaded(
    body: str, env: dict[str, str] | None = None
) -> tuple[set[str], subprocess.CompletedProcess[str]]:
    done = subprocess.run(
        [sys.executable, "-c", _PROBE.format(body=body)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    line = next((x for x in done.stderr.splitlines() if x.startswith("MODULES ")), None)
    assert line is not None, done.stderr
    return set(json.loads(line.removeprefix("MODULES "))), done


def _unexpected(loaded: set[str], allowed: set[str]) -> list[str]:
    # C accelerator modules of allowed modules (`_heapq` for `heapq`) count as the module itself.
    return sorted(m for m in loaded if m not in allowed and m.lstrip("_") not in allowed)


def test_importing_the_cli_loads_only_the_allow_list() -> None:
    loaded, _ = _loaded("import jobclient.cli")
    assert _unexpected(loaded, IMPORT_ALLOWED) == [], "import jobclient.cli loads modules it must not"
    assert {"jobclient.cli", "argparse"} <= loaded  # the probe measures what it claims to


def test_jobctl_help_loads_no_grpc_attrs_or_asyncio() -> None:
    loaded, done = _loaded(
        "from jobclient.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass"
    )
    assert "usage: jobctl" in done.stdout
    assert _unexpected(loaded, IMPORT_ALLOWED | HELP_ALSO_ALLOWED) == []


@pytest.mark.parametrize("forbidden", ["asyncio", "attrs", "grpc", "cattrs"])
def test_the_allow_list_check_catches_a_new_import(forbidden: str) -> None:
    # The check itself can fail: an import added to the CLI path is reported by name.
    loaded, _ = _loaded(f"import jobclient.cli\nimport {forbidden}")
    assert forbidden in _unexpected(loaded, IMPORT_ALLOWED)


@pytest.mark.parametrize("command", ["start", "run"])
def test_jobctl_start_and_run_load_no_json_converter_metadata_or_toml(command: str) -> None:
    server = FakeServer()
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("JOBCTL_", "GRPC_"))}
        env.update(
            JOBCTL_SERVER=server.target,
            JOBCTL_USER="alice",
            JOBCTL_CERTS=str(CERTS),
            JOBCTL_CONFIG="/nonexistent/jobctl.toml",
        )
        loaded, done = _loaded(
            f"from jobclient.cli import main\nassert main([{command!r}, '--', 'true']) == 0", env
        )
    finally:
        server.stop()
    assert done.returncode == 0, done.stderr
    assert len(server.servicer.calls("StartJob")) == 1, done.stderr  # it did start a job
    if command == "run":  # and followed it to its end
        assert len(server.servicer.calls("StreamOutput")) == 1, done.stderr
    assert sorted(loaded & START_FORBIDDEN) == []
    assert not any(m.startswith("jobclient._json") or m.startswith("cattrs") for m in loaded)
    # The generated code comes from the public module, once: five modules, as under the old private
    # name, and never through the deprecated alias (which would load it all a second time by name).
    assert sorted(m for m in loaded if m.startswith(("jobclient.proto", "jobclient._proto"))) == [
        "jobclient.proto",
        "jobclient.proto.jobworker",
        "jobclient.proto.jobworker.v1",
        "jobclient.proto.jobworker.v1.jobworker_pb2",
        "jobclient.proto.jobworker.v1.jobworker_pb2_grpc",
    ]


# The console script (`console_main`) defers the modules grpc and protobuf import for APIs jobctl never
# uses (jobclient.cli.DEFERRED_MODULES): they are created as lazy modules, and their code runs only
# when one of their attributes is read. Each is checked through a submodule or a dependency that its
# code imports, which is absent only as long as that code has not run.
_RAN_IF_EXECUTED = {
    "asyncio": "asyncio.events",
    "grpc.aio": "grpc.aio._channel",
    "google.protobuf.internal.python_message": "google.protobuf.text_format",
}

_CONSOLE_PROBE = """
import sys
sys.argv = ["jobctl", "run", "--", "true"]
from jobclient import cli
status = cli.console_main()
deferred = {{name: type(sys.modules[name]).__name__ for name in cli.DEFERRED_MODULES if name in sys.modules}}
sys.stderr.write(f"STATUS {{status}}\\nDEFERRED {{deferred!r}}\\n")
{after}
"""


def _console_run(env: dict[str, str], after: str = "", before: str = "") -> tuple[set[str], str]:
    loaded, done = _loaded(before + _CONSOLE_PROBE.format(after=after), env)
    assert "STATUS 0" in done.stderr, done.stderr
    return loaded, done.stderr


@pytest.fixture
def server_env() -> Iterator[tuple[FakeServer, dict[str, str]]]:
    server = FakeServer()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JOBCTL_", "GRPC_", "PROTOCOL_BUFFERS"))}
    env.update(
        JOBCTL_SERVER=server.target,
        JOBCTL_USER="alice",
        JOBCTL_CERTS=str(CERTS),
        JOBCTL_CONFIG="/nonexistent/jobctl.toml",
    )
    try:
        yield server, env
    finally:
        server.stop()


def test_the_console_script_runs_a_job_without_running_asyncio_grpc_aio_or_protobufs_python_code(
    server_env: tuple[FakeServer, dict[str, str]],
) -> None:
    from jobclient.cli import DEFERRED_MODULES

    server, env = server_env
    loaded, stderr = _console_run(env)
    assert len(server.servicer.calls("StartJob")) == 1, stderr  # the job was started over the channel
    assert len(server.servicer.calls("StreamOutput")) == 1, stderr  # and followed to its end
    assert set(DEFERRED_MODULES) == set(_RAN_IF_EXECUTED)
    # grpc and protobuf did import them (so the deferral is what kept their code from running)...
    assert set(DEFERRED_MODULES) <= loaded
    assert f"DEFERRED { {name: '_LazyModule' for name in DEFERRED_MODULES}!r}" in stderr
    # ...and nothing read them: what their code would have imported is not there.
    assert sorted(loaded & set(_RAN_IF_EXECUTED.values())) == []


def test_a_deferred_module_is_the_real_module_once_used(
    server_env: tuple[FakeServer, dict[str, str]],
) -> None:
    _, env = server_env
    after = """
import asyncio
import grpc, grpc.aio
async def answer():
    await asyncio.sleep(0)
    channel = grpc.aio.insecure_channel("127.0.0.1:9")
    assert isinstance(channel, grpc.aio.Channel)
    await channel.close()
    return 42
assert asyncio.run(answer()) == 42
from google.protobuf import text_format
from jobclient.proto.jobworker.v1 import jobworker_pb2 as pb
assert text_format.MessageToString(pb.GetJobRequest(job_id="x")).strip() == 'job_id: "x"'
sys.stderr.write("USED OK\\n")
"""
    loaded, stderr = _console_run(env, after)
    assert "USED OK" in stderr, stderr
    assert set(_RAN_IF_EXECUTED.values()) <= loaded


def test_jobctl_runs_on_protobufs_pure_python_implementation_too(
    server_env: tuple[FakeServer, dict[str, str]],
) -> None:
    # That implementation uses python_message: the deferred module is loaded at its first use.
    server, env = server_env
    env["PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION"] = "python"
    loaded, stderr = _console_run(env)
    assert len(server.servicer.calls("StreamOutput")) == 1, stderr
    assert "google.protobuf.text_format" in loaded  # python_message's code ran, as that implementation needs


def test_a_module_imported_before_the_console_script_is_left_as_it_was(
    server_env: tuple[FakeServer, dict[str, str]],
) -> None:
    _, env = server_env
    _, stderr = _console_run(env, before="import asyncio\n")
    assert "'asyncio': 'module'" in stderr, stderr  # the module it had imported, not a lazy one
    assert "'grpc.aio': '_LazyModule'" in stderr, stderr  # the others are still deferred


def test_main_itself_leaves_the_import_system_alone(server_env: tuple[FakeServer, dict[str, str]]) -> None:
    # A program that calls main() in-process keeps its modules eager, as imported.
    _, env = server_env
    loaded, done = _loaded(
        "meta = list(sys.meta_path)\nfrom jobclient.cli import main\n"
        "assert main(['run', '--', 'true']) == 0\nassert sys.meta_path == meta, sys.meta_path",
        env,
    )
    assert done.returncode == 0, done.stderr
    assert "asyncio.events" in loaded  # grpc's import of asyncio ran as usual
