"""A fleet of two workers driven from one client config (docs/fleet.md).

A deployment CA made with `certs/generate.sh ca`, one server certificate per host
(`generate.sh server`), one certificate per user valid on every host (`generate.sh user`), two
`jobserver`s, and one jobctl config file with a context per worker, in the documented format:

    current-context = "worker-1"
    [contexts.worker-1]
    server = "HOST:PORT"
    ca = ".../ca.crt"
    cert = ".../erin.crt"
    key = ".../erin.key"
    tls-server-name = "worker-1.test"     # optional

worker-2's certificate names only `worker-2.test` (no IP address): it is reached at 127.0.0.1 with
`tls-server-name`, which is what a client does with a host it reaches by an address the certificate
does not name.
"""

from __future__ import annotations

import os
import subprocess
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from e2e_support import JOBCTL, REPO, ServerProcess

from jobclient import Client, Credentials, JobNotFound, Unavailable

WORKERS = ("worker-1", "worker-2")


def generate(*args: str | Path) -> None:
    done = subprocess.run(
        ["bash", str(REPO / "certs" / "generate.sh"), *map(str, args)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr


@pytest.fixture
def fleet(tmp_path: Path, start_server: Callable[..., ServerProcess]) -> tuple[Path, list[ServerProcess]]:
    """Two workers with certificates of their own, and a client config with one context per worker."""
    pki = tmp_path / "pki"
    generate("ca", pki)
    generate("user", "erin", "user", "--ca-dir", pki)
    generate("server", "worker-1", "--dns", "worker-1.test", "--ip", "127.0.0.1", "--ca-dir", pki)
    generate("server", "worker-2", "--dns", "worker-2.test", "--ca-dir", pki)
    servers = [
        start_server(
            "--cert", str(pki / f"{name}.crt"), "--key", str(pki / f"{name}.key"), "--ca", str(pki / "ca.crt")
        )
        for name in WORKERS
    ]
    config = tmp_path / "jobctl" / "config.toml"
    config.parent.mkdir()
    lines = ['current-context = "worker-1"']
    for name, server in zip(WORKERS, servers, strict=True):
        lines += [
            "",
            f"[contexts.{name}]",
            f'server = "{server.target}"',
            f'ca = "{pki / "ca.crt"}"',
            f'cert = "{pki / "erin.crt"}"',
            f'key = "{pki / "erin.key"}"',
        ]
        if name == "worker-2":
            lines.append('tls-server-name = "worker-2.test"')
    config.write_text("\n".join(lines) + "\n")
    return config, servers


def contexts(config: Path) -> dict[str, dict[str, Any]]:
    with open(config, "rb") as f:
        return dict(tomllib.load(f)["contexts"])


def client_for(context: dict[str, Any]) -> Client:
    credentials = Credentials.from_files(cert=context["cert"], key=context["key"], ca=context["ca"])
    return Client(
        context["server"],
        credentials=credentials,
        tls_server_name=context.get("tls-server-name"),
        timeout=30,
    )


def test_one_client_config_drives_two_workers_through_the_sdk(
    fleet: tuple[Path, list[ServerProcess]],
) -> None:
    config, _servers = fleet
    clients = {name: client_for(context) for name, context in contexts(config).items()}
    try:
        ran = {}
        for name, client in clients.items():
            sink: list[bytes] = []
            job = client.run(["sh", "-c", 'echo "hello from $0"', name], out=sink.append)
            assert job.exit_code == 0 and job.owner == "erin"
            assert b"".join(sink) == f"hello from {name}\n".encode()
            ran[name] = job.id
        # Each worker knows its own jobs only: there is no shared state between workers.
        one, two = clients["worker-1"], clients["worker-2"]
        assert [j.id for j in one.list()] == [ran["worker-1"]]
        assert [j.id for j in two.list()] == [ran["worker-2"]]
        with pytest.raises(JobNotFound):
            two.status(ran["worker-1"])
        running = two.start(["sleep", "60"])
        assert one.status(ran["worker-1"]).ended and not two.status(running.id).ended
        assert two.stop(running.id, grace=0).ended
    finally:
        for client in clients.values():
            client.close()


def test_without_its_tls_server_name_a_worker_reached_by_address_is_refused(
    fleet: tuple[Path, list[ServerProcess]],
) -> None:
    config, _servers = fleet
    context = dict(contexts(config)["worker-2"])
    del context["tls-server-name"]
    with client_for(context) as client, pytest.raises(Unavailable):
        client.list()


def jobctl_with(
    context: dict[str, Any], *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    flags = [
        "--server",
        context["server"],
        "--cert",
        context["cert"],
        "--key",
        context["key"],
        "--ca",
        context["ca"],
    ]
    if "tls-server-name" in context:
        flags += ["--tls-server-name", context["tls-server-name"]]
    return subprocess.run(
        [str(JOBCTL), *flags, *args],
        env=env or {k: v for k, v in os.environ.items() if not k.startswith(("JOBCTL_", "GRPC_"))},
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def test_jobctl_reaches_each_worker_with_the_contexts_settings(
    fleet: tuple[Path, list[ServerProcess]],
) -> None:
    config, _servers = fleet
    for name, context in contexts(config).items():
        done = jobctl_with(context, "run", "--", "sh", "-c", 'echo "jobctl on $0"', name)
        assert done.returncode == 0, done.stderr
        assert done.stdout == f"jobctl on {name}\n"
    without = dict(contexts(config)["worker-2"])
    del without["tls-server-name"]
    refused = jobctl_with(without, "list")
    assert refused.returncode == 3, refused.stderr  # cannot reach the server (handshake refused)


def _jobctl_has_contexts() -> bool:
    helptext = subprocess.run([str(JOBCTL), "--help"], capture_output=True, text=True, check=False).stdout
    return "--context" in helptext


@pytest.mark.skipif(not _jobctl_has_contexts(), reason="this jobctl has no --context (a config file) yet")
def test_jobctl_contexts_pick_the_worker(fleet: tuple[Path, list[ServerProcess]]) -> None:
    config, _servers = fleet
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JOBCTL_", "GRPC_"))}
    env["JOBCTL_CONFIG"] = str(config)
    for args, worker in ((["--context", "worker-2"], "worker-2"), ([], "worker-1")):  # [] = current-context
        done = subprocess.run(
            [str(JOBCTL), *args, "run", "--", "echo", "via context"],
            env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert done.returncode == 0 and done.stdout == "via context\n", done.stderr
        with client_for(contexts(config)[worker]) as client:
            assert [job.argv for job in client.list()][-1] == ("echo", "via context")
