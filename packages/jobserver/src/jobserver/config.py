"""The server's settings: built-in defaults < config file (TOML) < environment < command-line flags.

Every command-line flag has an environment twin (`--state-dir` / `JOBSERVER_STATE_DIR`). The config
file holds the same operational settings plus the limit defaults, maximums and request caps, which are
not flags (see docs/jobserver.md for the file's layout). Any unknown key is an error: a typo must not
silently leave a limit at its default.
"""

from __future__ import annotations

import argparse
import math
import os
import tomllib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from jobcore.errors import InvalidLimit
from jobcore.spec import Limits, host_cpu_count, host_memory_bytes
from jobcore.units import parse_cpu, parse_rate, parse_size
from jobserver import DISTRIBUTION, __version__
from jobserver.errors import ConfigError
from jobserver.retention import parse_age

MIB = 1024 * 1024

DEFAULT_LIMITS = Limits(cpu=1.0, memory=512 * MIB, pids=256)

#: Ways a request may weaken a job's isolation (the Isolation message's field names). Each is refused
#: with PERMISSION_DENIED unless the caller's role allows it ([roles.<role>] allow = [...]).
WEAKENINGS = (
    "disable_pid",
    "disable_mount",
    "host_network",
    "disable_uts",
    "disable_ipc",
    "disable_sandbox",
    "run_as_root",
)
DEFAULT_ROLE_ALLOW: dict[str, frozenset[str]] = {
    "admin": frozenset(WEAKENINGS),
    "user": frozenset(),
}
#: uids (and gids) given to identities that the config does not map (like systemd's DynamicUser=):
#: far above any account a distribution or an administrator creates.
DEFAULT_UID_RANGE = (500000, 599999)
#: Directories too widely used to hide because the server's key or config lies in them.
_SHARED_DIRS = frozenset(
    {"/var/lib", "/var/run", "/var/tmp", "/usr/local", "/usr/share", "/usr/lib", "/usr/bin", "/run/user"}
)


def default_max_limits() -> Limits:
    """What a request may ask for at most, unless configured: the whole host, 32768 pids, IO unlimited."""
    return Limits(cpu=float(host_cpu_count()), memory=host_memory_bytes(), pids=32768)


@attrs.frozen
class ServerConfig:
    listen: str = "localhost:50051"
    cert: Path = Path("/etc/jobworker/server.crt")
    key: Path = Path("/etc/jobworker/server.key")
    ca: Path = Path("/etc/jobworker/ca.crt")
    state_dir: Path = Path("/var/lib/jobworker")
    controller: str = "auto"
    #: "json", "console", or None: console on a TTY, JSON otherwise.
    log_format: str | None = None
    #: File the bound port is written to once the server listens (useful with port 0).
    port_file: Path | None = None
    #: "debug", "info", "warning" or "error": the least severe event logged.
    log_level: str = "info"
    #: HOST:PORT of the plaintext HTTP endpoint serving Prometheus metrics at /metrics (None = off).
    metrics_listen: str | None = None
    #: HOST:PORT or unix:PATH of the plaintext gRPC health endpoint for probes (None = off).
    health_listen: str | None = None
    default_limits: Limits = DEFAULT_LIMITS
    max_limits: Limits = attrs.field(factory=default_max_limits)
    max_running_jobs_per_user: int = 32
    max_argv_count: int = 4096
    max_argv_bytes: int = 256 * 1024
    max_env_count: int = 1024
    max_env_bytes: int = 256 * 1024
    max_cwd_bytes: int = 4096
    max_receive_message_bytes: int = 1 * MIB
    max_concurrent_streams: int = 256
    #: Threads serving calls: every open stream holds one (gRPC's synchronous server).
    unary_threads: int = 32
    #: Unary calls / output streams one identity may have in flight (None: a quarter of the pool part).
    max_calls_per_user: int | None = None
    max_streams_per_user: int | None = None
    #: Calls gRPC queues for a thread beyond the pool before it answers RESOURCE_EXHAUSTED itself.
    max_queued_calls: int = 1024
    #: How long StopJob waits for the job to end before it answers with the stop under way.
    stop_wait_seconds: float = 5.0
    default_stop_grace_seconds: float = 10.0
    max_stop_grace_seconds: float = 300.0
    shutdown_grace_seconds: float = 10.0
    #: Bytes of stored output per job (None = no cap); past it jobcore stops the job.
    output_cap: int | None = 1024 * MIB
    #: Bytes of stored output per user (None = no quota); at it, the user's new jobs are refused.
    output_user_quota: int | None = 10 * 1024 * MIB
    #: Retention: ended jobs older than this many seconds are deleted (None: kept however old)...
    retention_max_age_seconds: float | None = 30 * 86400.0
    #: ...and so are those past the most recent N ended jobs of each user (None: no limit).
    retention_max_ended_jobs_per_user: int | None = 1000
    retention_interval_seconds: float = 600.0

    @property
    def calls_per_user(self) -> int:
        return self.max_calls_per_user or max(1, self.unary_threads // 4)

    @property
    def streams_per_user(self) -> int:
        return self.max_streams_per_user or max(1, self.max_concurrent_streams // 4)

    #: The config file these settings came from (hidden from jobs, with the key, cert and CA).
    config_file: Path | None = None
    #: Where identities without an explicit mapping get their uid (= gid), inclusive.
    uid_range: tuple[int, int] = DEFAULT_UID_RANGE
    #: Explicit identity -> (uid, gid) mappings ([sandbox.users]).
    user_ids: dict[str, tuple[int, int]] = attrs.field(factory=dict)
    #: More paths no job may see (besides the state directory, cert, key, CA and config file).
    hidden_paths: tuple[Path, ...] = ()
    #: role -> the isolation weakenings it may ask for (see WEAKENINGS).
    role_allow: dict[str, frozenset[str]] = attrs.field(factory=lambda: dict(DEFAULT_ROLE_ALLOW))

    def paths_hidden_from_jobs(self) -> list[Path]:
        """Everything of the server's that a job must not see: the state directory, the key, the
        certificates and the config file, and the directories that hold them (keys of other
        identities, a CA key, often lie beside them: /etc/jobworker, a checkout's certs/) unless such
        a directory is one of the system's own (/etc, /var/lib, ...), which jobs need."""
        files = [self.cert, self.key, self.ca]
        if self.config_file is not None:
            files.append(self.config_file)
        paths = [self.state_dir, *files, *self.hidden_paths]
        for file in files:
            parent = file.absolute().parent
            if len(parent.parts) > 2 and str(parent) not in _SHARED_DIRS:
                paths.append(parent)
        return list(dict.fromkeys(p.absolute() for p in paths))

    @property
    def jobs_dir(self) -> Path:
        return self.state_dir / "jobs"

    @property
    def database_path(self) -> Path:
        return self.state_dir / "jobserver.db"

    @property
    def user_ids_path(self) -> Path:
        return self.state_dir / "identities.db"


#: flag name -> (environment variable, ServerConfig field, help)
FLAGS: dict[str, tuple[str, str, str]] = {
    "--listen": ("JOBSERVER_LISTEN", "listen", "HOST:PORT to listen on (default localhost:50051)"),
    "--cert": ("JOBSERVER_CERT", "cert", "server certificate (PEM, ECDSA)"),
    "--key": ("JOBSERVER_KEY", "key", "server private key (PEM)"),
    "--ca": ("JOBSERVER_CA", "ca", "CA certificate that client certificates must chain to"),
    "--state-dir": ("JOBSERVER_STATE_DIR", "state_dir", "state directory (default /var/lib/jobworker)"),
    "--controller": (
        "JOBSERVER_CONTROLLER",
        "controller",
        "controller backend: auto, cgroup2, cgroup1, none",
    ),
    "--log-format": ("JOBSERVER_LOG_FORMAT", "log_format", "json or console (default: console on a TTY)"),
    "--port-file": ("JOBSERVER_PORT_FILE", "port_file", "write the bound port to this file"),
    "--log-level": ("JOBSERVER_LOG_LEVEL", "log_level", "debug, info, warning or error (default info)"),
    "--metrics-listen": (
        "JOBSERVER_METRICS_LISTEN",
        "metrics_listen",
        "HOST:PORT to serve Prometheus metrics on, plaintext, at /metrics (default: off)",
    ),
    "--health-listen": (
        "JOBSERVER_HEALTH_LISTEN",
        "health_listen",
        "HOST:PORT or unix:PATH for a plaintext gRPC health service, for probes (default: off)",
    ),
}
CONFIG_ENV = "JOBSERVER_CONFIG"

_SERVER_KEYS = {
    "listen": str,
    "cert": Path,
    "key": Path,
    "ca": Path,
    "state_dir": Path,
    "controller": str,
    "log_format": str,
    "port_file": Path,
    "log_level": str,
    "metrics_listen": str,
    "health_listen": str,
    "max_concurrent_streams": int,
    "unary_threads": int,
    "max_calls_per_user": int,
    "max_streams_per_user": int,
    "max_queued_calls": int,
    "max_receive_message_bytes": "size",
    "shutdown_grace_seconds": float,
}
_REQUEST_KEYS = {
    "max_running_jobs_per_user": int,
    "max_argv_count": int,
    "max_argv_bytes": "size",
    "max_env_count": int,
    "max_env_bytes": "size",
    "max_cwd_bytes": int,
    "default_stop_grace_seconds": float,
    "max_stop_grace_seconds": float,
    "stop_wait_seconds": float,
}
_LIMIT_PARSERS: dict[str, Callable[[str], int | float]] = {
    "cpu": parse_cpu,
    "memory": parse_size,
    "pids": int,
    "io_read_bps": parse_rate,
    "io_write_bps": parse_rate,
    "io_read_iops": int,
    "io_write_iops": int,
}


def version_line() -> str:
    return f"jobserver {__version__} ({DISTRIBUTION})"


def build_arg_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jobserver",
        description="Remote Job Worker server: runs jobs for clients authenticated by mutual TLS 1.3.",
        epilog="Each flag can also be set by the environment variable shown; flags win over the "
        "environment, which wins over the config file.",
    )
    parser.add_argument("--version", action="version", version=version_line())
    parser.add_argument("--config", help=f"TOML config file [{CONFIG_ENV}]")
    for flag, (env, _field, text) in FLAGS.items():
        parser.add_argument(flag, help=f"{text} [{env}]")
    return parser


def _convert(where: str, kind: Any, value: Any) -> Any:
    result: int | float
    try:
        if kind == "size":
            if isinstance(value, bool) or not isinstance(value, int | str):
                raise ValueError(f"expected a size such as 1048576 or '1M', got {value!r}")
            result = parse_size(value) if isinstance(value, str) else value
        elif kind is Path:
            if not isinstance(value, str) or not value:
                raise ValueError(f"expected a path, got {value!r}")
            return Path(value)
        elif kind is str:
            if not isinstance(value, str):
                raise ValueError(f"expected a string, got {value!r}")
            return value
        elif kind is float:
            if isinstance(value, bool) or not isinstance(value, int | float | str):
                raise ValueError(f"expected a number, got {value!r}")
            result = float(value)
            if not math.isfinite(result):
                raise ValueError(f"expected a finite number, got {value!r}")
        else:
            if isinstance(value, bool) or not isinstance(value, int | str):
                raise ValueError(f"expected a whole number, got {value!r}")
            result = int(value)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    if result <= 0:
        raise ConfigError(f"{where}: must be positive, got {value!r}")
    return result


def _limits_from_table(where: str, table: Any, base: Limits | None) -> Limits:
    if not isinstance(table, Mapping):
        raise ConfigError(f"{where}: expected a table of limits")
    values: dict[str, Any] = {k: getattr(base, k) for k in Limits.RESOURCE_FIELDS} if base else {}
    for name, raw in table.items():
        parser = _LIMIT_PARSERS.get(name)
        if parser is None:
            raise ConfigError(f"{where}: unknown limit {name!r} (known: {', '.join(_LIMIT_PARSERS)})")
        if raw is False or raw == "none":
            values[name] = None  # "no default" / "no maximum"
            continue
        try:
            values[name] = parser(raw) if isinstance(raw, str) else raw
        except ValueError as exc:
            raise ConfigError(f"{where}.{name}: {exc}") from None
    try:
        return Limits(**values)
    except InvalidLimit as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _check_keys(where: str, table: Any, known: Sequence[str]) -> Mapping[str, Any]:
    if not isinstance(table, Mapping):
        raise ConfigError(f"{where}: expected a table")
    for key in table:
        if key not in known:
            raise ConfigError(f"{where}: unknown setting {key!r} (known: {', '.join(known)})")
    return table


def settings_from_file(path: Path) -> dict[str, Any]:
    """ServerConfig fields set by a TOML config file."""
    where = str(path)
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {where}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {where} is not valid TOML: {exc}") from None
    _check_keys(where, data, ["server", "requests", "limits", "output", "retention", "sandbox", "roles"])
    out: dict[str, Any] = {}
    for section, keys in (("server", _SERVER_KEYS), ("requests", _REQUEST_KEYS)):
        table = _check_keys(f"{where} [{section}]", data.get(section, {}), list(keys))
        for key, raw in table.items():
            out[key] = _convert(f"{where} [{section}] {key}", keys[key], raw)
    limits = _check_keys(f"{where} [limits]", data.get("limits", {}), ["default", "max"])
    if "default" in limits:
        out["default_limits"] = _limits_from_table(f"{where} [limits.default]", limits["default"], None)
    if "max" in limits:
        out["max_limits"] = _limits_from_table(f"{where} [limits.max]", limits["max"], default_max_limits())
    output = _check_keys(f"{where} [output]", data.get("output", {}), ["cap", "user_quota"])
    for key, field in (("cap", "output_cap"), ("user_quota", "output_user_quota")):
        if key in output:
            value = output[key]
            unlimited = value is False or value == "none"
            out[field] = None if unlimited else _convert(f"{where} [output] {key}", "size", value)
    retention = _check_keys(
        f"{where} [retention]",
        data.get("retention", {}),
        ["max_age", "max_ended_jobs_per_user", "interval_seconds"],
    )
    if "max_age" in retention:
        out["retention_max_age_seconds"] = _age(f"{where} [retention] max_age", retention["max_age"])
    if "max_ended_jobs_per_user" in retention:
        value = retention["max_ended_jobs_per_user"]
        where_key = f"{where} [retention] max_ended_jobs_per_user"
        out["retention_max_ended_jobs_per_user"] = None if value is False else _convert(where_key, int, value)
    if "interval_seconds" in retention:
        where_key = f"{where} [retention] interval_seconds"
        out["retention_interval_seconds"] = _convert(where_key, float, retention["interval_seconds"])
    out.update(_sandbox_settings(where, data.get("sandbox", {})))
    if "roles" in data:
        out["role_allow"] = _role_settings(where, data["roles"])
    return out


def _id(where: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 2**32 - 2:
        raise ConfigError(f"{where}: expected a uid/gid from 1 to {2**32 - 2}, got {value!r}")
    return value


def _sandbox_settings(where: str, data: Any) -> dict[str, Any]:
    table = _check_keys(f"{where} [sandbox]", data, ["uid_range", "users", "hidden_paths"])
    out: dict[str, Any] = {}
    if "uid_range" in table:
        raw = table["uid_range"]
        if not isinstance(raw, list) or len(raw) != 2:
            raise ConfigError(f"{where} [sandbox] uid_range: expected [FIRST, LAST], got {raw!r}")
        first, last = (_id(f"{where} [sandbox] uid_range", v) for v in raw)
        if first > last:
            raise ConfigError(f"{where} [sandbox] uid_range: {first} is above {last}")
        out["uid_range"] = (first, last)
    if "users" in table:
        users = table["users"]
        if not isinstance(users, Mapping):
            raise ConfigError(f"{where} [sandbox.users]: expected a table of NAME = UID or [UID, GID]")
        mapped: dict[str, tuple[int, int]] = {}
        for name, raw in users.items():
            at = f"{where} [sandbox.users] {name}"
            if isinstance(raw, list) and len(raw) == 2:
                mapped[name] = (_id(at, raw[0]), _id(at, raw[1]))
            else:
                mapped[name] = (_id(at, raw), _id(at, raw))
        out["user_ids"] = mapped
    if "hidden_paths" in table:
        raw = table["hidden_paths"]
        if not isinstance(raw, list) or not all(isinstance(p, str) and p.startswith("/") for p in raw):
            raise ConfigError(f"{where} [sandbox] hidden_paths: expected a list of absolute paths")
        out["hidden_paths"] = tuple(Path(p) for p in raw)
    return out


def _role_settings(where: str, data: Any) -> dict[str, frozenset[str]]:
    roles = _check_keys(f"{where} [roles]", data, list(DEFAULT_ROLE_ALLOW))
    out = dict(DEFAULT_ROLE_ALLOW)
    for role, table in roles.items():
        allow = _check_keys(f"{where} [roles.{role}]", table, ["allow"]).get("allow", [])
        if not isinstance(allow, list) or not all(isinstance(a, str) for a in allow):
            raise ConfigError(f"{where} [roles.{role}] allow: expected a list of names")
        unknown = [a for a in allow if a not in WEAKENINGS]
        if unknown:
            raise ConfigError(
                f"{where} [roles.{role}] allow: unknown {', '.join(map(repr, unknown))} "
                f"(known: {', '.join(WEAKENINGS)})"
            )
        out[role] = frozenset(allow)
    return out


def _age(where: str, value: Any) -> float | None:
    """A retention age: seconds, or a string such as "12h", "30d", "2w"; false = no maximum."""
    if value is False:
        return None
    try:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise ValueError(f"expected an age such as 3600, '12h' or '30d', got {value!r}")
        seconds = parse_age(value) if isinstance(value, str) else float(value)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    if not math.isfinite(seconds) or seconds <= 0:
        raise ConfigError(f"{where}: must be positive, got {value!r}")
    return seconds


def load_config(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> ServerConfig:
    """The configuration from built-in defaults, the config file, the environment and `argv`."""
    env = os.environ if environ is None else environ
    args = build_arg_parser().parse_args(argv)
    settings: dict[str, Any] = {}
    config_path = args.config or env.get(CONFIG_ENV)
    if config_path:
        settings.update(settings_from_file(Path(config_path)))
        settings["config_file"] = Path(config_path)
    for flag, (env_name, field, _text) in FLAGS.items():
        value = getattr(args, field)
        source = f"{flag}"
        if value is None and env.get(env_name):
            value, source = env[env_name], env_name
        if value is not None:
            settings[field] = _convert(source, _SERVER_KEYS[field], value)
    config = ServerConfig(**settings)
    validate(config)
    return config


LOG_LEVELS = ("debug", "info", "warning", "error")


def _is_host_port(address: str) -> bool:
    host, sep, port = address.rpartition(":")
    return bool(sep and host and port.isdigit() and int(port) <= 65535)


def validate(config: ServerConfig) -> None:
    """Cross-field checks: a known log format, a HOST:PORT, defaults within the maximums."""
    if config.log_format not in (None, "json", "console"):
        raise ConfigError(f"log format {config.log_format!r} is not one of json, console")
    if config.log_level not in LOG_LEVELS:
        raise ConfigError(f"log level {config.log_level!r} is not one of {', '.join(LOG_LEVELS)}")
    for what, address in (("listen", config.listen), ("metrics listen", config.metrics_listen)):
        if address is not None and not _is_host_port(address):
            raise ConfigError(f"{what} address {address!r} is not HOST:PORT")
    health = config.health_listen
    if health is not None and not (_is_host_port(health) or (health.startswith("unix:") and health[5:])):
        raise ConfigError(f"health listen address {health!r} is not HOST:PORT or unix:PATH")
    try:
        Limits().resolve(config.default_limits, config.max_limits)
    except InvalidLimit as exc:
        raise ConfigError(f"a default limit exceeds its maximum: {exc}") from None
    if config.calls_per_user > config.unary_threads:
        raise ConfigError("max_calls_per_user exceeds unary_threads (one user could hold every thread)")
    if config.streams_per_user > config.max_concurrent_streams:
        raise ConfigError("max_streams_per_user exceeds max_concurrent_streams")
    if config.default_stop_grace_seconds > config.max_stop_grace_seconds:
        raise ConfigError("default_stop_grace_seconds exceeds max_stop_grace_seconds")
    first, last = config.uid_range
    owners: dict[int, str] = {}
    for name, (uid, _gid) in config.user_ids.items():
        if uid in owners:
            raise ConfigError(
                f"[sandbox.users] {name} and {owners[uid]} both map to uid {uid}: each identity needs a "
                "uid of its own (one could signal and read the other's jobs)"
            )
        owners[uid] = name
        if first <= uid <= last:
            raise ConfigError(
                f"[sandbox.users] {name} = {uid} is inside uid_range {first}-{last}, from which other "
                "identities get their uids: pick a uid outside it"
            )
