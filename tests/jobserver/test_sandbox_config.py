"""The sandbox's server settings: the uid map, the config's [sandbox] and [roles], the request policy."""

from __future__ import annotations

import pwd
import sqlite3
from pathlib import Path

import grpc
import pytest

from jobclient.proto.jobworker.v1 import jobworker_pb2 as pb
from jobcore.spec import RunAs
from jobserver.config import DEFAULT_ROLE_ALLOW, WEAKENINGS, ServerConfig, load_config
from jobserver.convert import check_isolation_policy, spec_from_request
from jobserver.errors import ConfigError, IdentityError, PermissionDenied
from jobserver.identities import UserIds
from jobserver.interceptor import failure_for


def config_from(tmp_path: Path, text: str) -> ServerConfig:
    path = tmp_path / "server.toml"
    path.write_text(text)
    return load_config(["--config", str(path)], environ={})


def test_uids_are_allocated_once_per_identity_and_remembered(tmp_path: Path) -> None:
    db = tmp_path / "identities.db"
    ids = UserIds(db, (700000, 700009))
    alice, bob = ids.run_as("alice"), ids.run_as("bob")
    assert alice == RunAs(700000, 700000) and bob == RunAs(700001, 700001)
    assert ids.run_as("alice") == alice
    ids.close()
    again = UserIds(db, (700000, 700009))
    assert again.run_as("carol") == RunAs(700002, 700002)  # alice's and bob's stay theirs
    assert again.run_as("bob") == bob
    again.close()


def test_a_uid_of_a_host_account_is_skipped(tmp_path: Path) -> None:
    # A host account's uid whose next uid is free: a range of the two must give the second.
    used = {entry.pw_uid for entry in pwd.getpwall()}
    taken = min(uid for uid in used if uid + 1 not in used)
    ids = UserIds(tmp_path / "ids.db", (taken, taken + 1))
    assert ids.run_as("alice").uid == taken + 1
    ids.close()


def test_an_exhausted_range_is_a_clear_error(tmp_path: Path) -> None:
    ids = UserIds(tmp_path / "ids.db", (700000, 700000))
    ids.run_as("alice")
    with pytest.raises(IdentityError, match="no free uid left in the range 700000-700000 for bob"):
        ids.run_as("bob")
    ids.close()


def test_an_explicit_mapping_wins(tmp_path: Path) -> None:
    ids = UserIds(tmp_path / "ids.db", (700000, 700009), {"alice": (1001, 1002)})
    assert ids.run_as("alice") == RunAs(1001, 1002)
    assert ids.run_as("bob") == RunAs(700000, 700000)
    ids.close()


def test_the_config_sets_range_users_hidden_paths_and_roles(tmp_path: Path) -> None:
    config = config_from(
        tmp_path,
        "[sandbox]\nuid_range = [800000, 800100]\nhidden_paths = ['/etc/secret']\n"
        "[sandbox.users]\nalice = 1001\nbob = [1002, 1003]\n"
        "[roles.user]\nallow = ['host_network']\n",
    )
    assert config.uid_range == (800000, 800100)
    assert config.user_ids == {"alice": (1001, 1001), "bob": (1002, 1003)}
    assert Path("/etc/secret") in config.paths_hidden_from_jobs()
    hidden = config.paths_hidden_from_jobs()
    assert config.config_file in hidden and config.config_file.parent in hidden
    assert Path("/etc/jobworker") in hidden  # the default key's directory, with the certificates
    assert config.role_allow["user"] == frozenset({"host_network"})
    assert config.role_allow["admin"] == DEFAULT_ROLE_ALLOW["admin"] == frozenset(WEAKENINGS)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[sandbox]\nuid_range = [5, 2]\n", "5 is above 2"),
        ("[sandbox]\nuid_range = 5\n", r"expected \[FIRST, LAST\]"),
        ("[sandbox.users]\nalice = 0\n", "expected a uid/gid from 1"),
        ("[sandbox.users]\nalice = 1001\nbob = 1001\n", "both map to uid 1001"),
        ("[sandbox.users]\nalice = 500001\n", "inside uid_range"),
        ("[sandbox]\nhidden_paths = ['relative']\n", "absolute paths"),
        ("[roles.user]\nallow = ['everything']\n", "unknown 'everything'"),
        ("[roles.guest]\nallow = []\n", "unknown setting 'guest'"),
    ],
)
def test_bad_sandbox_settings_are_clear_errors(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config_from(tmp_path, text)


def test_system_directories_holding_a_key_are_not_hidden_whole() -> None:
    config = ServerConfig(key=Path("/etc/server.key"), cert=Path("/var/lib/server.crt"))
    hidden = config.paths_hidden_from_jobs()
    assert Path("/etc/server.key") in hidden and Path("/var/lib/server.crt") in hidden
    assert Path("/etc") not in hidden and Path("/var/lib") not in hidden


def test_every_weakening_is_refused_for_users_by_default() -> None:
    config = ServerConfig()
    for name in WEAKENINGS:
        iso = pb.Isolation(**{name: True})
        with pytest.raises(PermissionDenied, match=f"may not ask for {name}") as info:
            check_isolation_policy(iso, "user", config)
        failure = failure_for(info.value)
        assert failure is not None and failure.code.name == "PERMISSION_DENIED"
        check_isolation_policy(iso, "admin", config)  # allowed


def test_no_mount_namespace_needs_the_sandbox_permission_too() -> None:
    config = ServerConfig(role_allow={"user": frozenset({"disable_mount"}), "admin": frozenset()})
    with pytest.raises(PermissionDenied, match="disable_sandbox"):
        check_isolation_policy(pb.Isolation(disable_mount=True), "user", config)
    request = pb.StartJobRequest(argv=["true"], isolation=pb.Isolation(disable_mount=True))
    spec = spec_from_request(request, "alice", config, RunAs(700000, 700000))
    assert spec.isolation.mount is False and spec.isolation.sandbox is False


def test_a_request_without_cwd_gets_the_scratch_directory() -> None:
    spec = spec_from_request(pb.StartJobRequest(argv=["true"]), "alice", ServerConfig(), RunAs(7, 7))
    assert spec.cwd is None and spec.user == RunAs(7, 7) and spec.isolation.sandbox


def test_a_full_state_disk_on_a_new_identity_is_the_servers_disk_full_answer(tmp_path: Path) -> None:
    # As every other write to a full state disk: RESOURCE_EXHAUSTED with the one message, which names
    # no path of the server (it named the identities database's, to whichever user came first).
    import subprocess

    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], check=True)
    try:
        ids = UserIds(mount / "identities.db", (700000, 700009))
        ids.run_as("alice")
        with open(mount / "filler", "wb") as f, pytest.raises(OSError):
            f.write(b"x" * (2 << 20))
        with pytest.raises(sqlite3.Error) as raised:
            ids.run_as("bob")
        failure = failure_for(raised.value)
        assert failure is not None
        assert failure.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert (
            failure.message == "no space left in the server's state directory; try again once space is freed"
        )
        (mount / "filler").unlink()
        assert ids.run_as("bob") == RunAs(700001, 700001)  # room again: bob gets his uid
        ids.close()
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)
