"""jobclient.config: server addresses, the config file's contexts, and which setting wins."""

from __future__ import annotations

import asyncio
import subprocess
import tomllib
from pathlib import Path

import pytest
from fake_jobworker import CERTS

import jobclient
from jobclient import ConfigError
from jobclient.config import load_contexts, normalize_target, resolve

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("given", "target"),
    [
        ("worker1", "worker1:50051"),
        ("worker1.example.com", "worker1.example.com:50051"),
        ("worker1:443", "worker1:443"),
        ("10.0.0.5", "10.0.0.5:50051"),
        ("10.0.0.5:7000", "10.0.0.5:7000"),
        ("::1", "[::1]:50051"),
        ("[::1]", "[::1]:50051"),
        ("[::1]:7000", "[::1]:7000"),
        ("unix:/run/jobworker.sock", "unix:/run/jobworker.sock"),
        ("dns:///worker1:7000", "dns:///worker1:7000"),
    ],
)
def test_a_server_without_a_port_gets_50051(given: str, target: str) -> None:
    assert normalize_target(given) == target


def test_jobctl_server_host_alone_uses_port_50051() -> None:
    done = subprocess.run(
        [str(REPO / ".venv" / "bin" / "jobctl"), "--server", "127.0.0.1", "--user", "alice",
         "--certs", str(CERTS), "list"],
        capture_output=True, text=True, timeout=60, check=False, stdin=subprocess.DEVNULL,
        env={"PATH": "/usr/bin:/bin", "JOBCTL_CONFIG": "/nonexistent"},
    )  # fmt: skip
    # Nothing listens on 50051 here (the tests' servers use OS-chosen ports): the error names it.
    assert done.returncode == 3, done.stderr
    assert "cannot reach the job server at 127.0.0.1:50051" in done.stderr


def _config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("current-context = [", "is not valid TOML"),
        ('colour = "blue"', "unknown key(s) colour"),
        ('current-context = "x"', "current-context 'x' names no [contexts.x]"),
        ('[contexts.a]\nserver = "h"\nport = 1', "context 'a': unknown key(s) port"),
        ('[contexts.a]\ncert = "a.crt"', "ca, cert and key go together: missing ca, key"),
        ("[contexts.a]\nserver = 7", "server must be a non-empty string"),
        ('[contexts.a]\ntls-server-name = ""', "tls-server-name must be a non-empty string"),
    ],
)
def test_a_bad_config_file_is_an_error_naming_it(tmp_path: Path, text: str, message: str) -> None:
    path = _config(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_contexts(str(path))
    assert message in info.value.message
    assert str(path) in info.value.message


def test_context_paths_are_relative_to_the_config_file(tmp_path: Path) -> None:
    path = _config(
        tmp_path,
        'current-context = "lab"\n[contexts.lab]\nserver = "w1"\nca = "c/ca.crt"\ncert = "/abs/a.crt"\n'
        'key = "~/a.key"\n',
    )
    current, contexts = load_contexts(str(path))
    assert current == "lab"
    lab = contexts["lab"]
    assert lab.ca == str(tmp_path / "c" / "ca.crt")
    assert lab.cert == "/abs/a.crt"
    assert lab.key == str(Path("~/a.key").expanduser())


def test_a_missing_config_file_is_no_context(tmp_path: Path) -> None:
    assert load_contexts(str(tmp_path / "none.toml")) == (None, {})


def test_precedence_option_then_environment_then_context(tmp_path: Path) -> None:
    path = _config(
        tmp_path,
        'current-context = "a"\n[contexts.a]\nserver = "ctx-host"\nca = "ca"\ncert = "c"\nkey = "k"\n'
        'tls-server-name = "ctx-name"\n[contexts.b]\nserver = "b-host:9"\n',
    )
    env = {"JOBCTL_CONFIG": str(path)}
    from_context = resolve(environ=env)
    assert (from_context.target, from_context.cert, from_context.tls_server_name) == (
        "ctx-host:50051",
        str(tmp_path / "c"),
        "ctx-name",
    )
    assert from_context.context == "a"
    from_env = resolve(environ=env | {"JOBCTL_SERVER": "env-host", "JOBCTL_USER": "bob"})
    assert (from_env.target, from_env.user, from_env.cert) == ("env-host:50051", "bob", None)
    explicit = resolve(server="cli-host:1", user="carl", environ=env | {"JOBCTL_SERVER": "env-host"})
    assert (explicit.target, explicit.user) == ("cli-host:1", "carl")
    chosen = resolve(context="b", user="alice", environ=env)
    assert (chosen.target, chosen.context, chosen.tls_server_name) == ("b-host:9", "b", None)
    via_env = resolve(user="alice", environ=env | {"JOBCTL_CONTEXT": "b"})
    assert via_env.context == "b"


def test_identity_problems_are_config_errors(tmp_path: Path) -> None:
    env = {"JOBCTL_CONFIG": str(tmp_path / "none.toml")}
    with pytest.raises(ConfigError, match="who are you"):
        resolve(environ=env)
    with pytest.raises(ConfigError, match="not both"):
        resolve(user="alice", cert="c", environ=env)
    with pytest.raises(ConfigError, match="missing --key, --ca"):
        resolve(cert="c", environ=env)
    with pytest.raises(ConfigError, match="both \\$JOBCTL_USER and"):
        resolve(environ=env | {"JOBCTL_USER": "a", "JOBCTL_CERT": "c"})
    with pytest.raises(ConfigError, match=r"no context 'x'.*contexts: none"):
        resolve(context="x", user="alice", environ=env)


def test_the_version_is_the_distributions() -> None:
    pyproject = tomllib.loads((REPO / "packages" / "jobclient" / "pyproject.toml").read_text())
    assert jobclient.__version__ == pyproject["project"]["version"]
    version = subprocess.run(
        [str(REPO / ".venv" / "bin" / "jobctl"), "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert version.stdout == f"jobctl {pyproject['project']['version']}\n"
    assert version.returncode == 0


def test_client_from_env_reads_the_environment_and_the_context(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fake_jobworker import FakeServer

    from jobclient import AsyncClient, Client

    server = FakeServer()
    try:
        path = _config(
            tmp_path,
            f'current-context = "fake"\n[contexts.fake]\nserver = "{server.target}"\n'
            f'ca = "{CERTS / "ca.crt"}"\ncert = "{CERTS / "bob.crt"}"\nkey = "{CERTS / "bob.key"}"\n',
        )
        for name in (
            "JOBCTL_SERVER",
            "JOBCTL_USER",
            "JOBCTL_CERT",
            "JOBCTL_KEY",
            "JOBCTL_CA",
            "JOBCTL_CONTEXT",
        ):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("JOBCTL_CONFIG", str(path))
        with Client.from_env(timeout=10) as client:
            assert client.target == server.target
            assert client.list() == []
        assert server.servicer.requests[-1][1] == "Bob"  # the context's certificate
        monkeypatch.setenv("JOBCTL_USER", "alice")
        monkeypatch.setenv("JOBCTL_CERTS", str(CERTS))
        with Client.from_env(timeout=10) as client:
            client.list()
        assert server.servicer.requests[-1][1] == "Alice"  # the environment wins over the context

        async def async_list() -> str:
            async with AsyncClient.from_env(timeout=10) as aclient:
                await aclient.list()
                return aclient.target

        assert asyncio.run(async_list()) == server.target
    finally:
        server.stop()
