"""Where a client connects and who it is: options, environment variables and named contexts.

The same rules serve `jobctl` and `Client.from_env()`. Each setting comes from the first of:

1. the explicit value (a jobctl option, a `from_env` argument);
2. the environment: `JOBCTL_SERVER`, `JOBCTL_USER` (+ `JOBCTL_CERTS`), or `JOBCTL_CERT`, `JOBCTL_KEY`,
   `JOBCTL_CA`; `JOBCTL_TLS_SERVER_NAME`;
3. the selected context of the config file (TOML, `$JOBCTL_CONFIG`, default
   `~/.config/jobctl/config.toml`), chosen by `--context` / `context=`, else `$JOBCTL_CONTEXT`, else
   the file's `current-context`:

       current-context = "lab"

       [contexts.lab]
       server = "worker1.example.com"      # port 50051 unless given
       ca = "~/.config/jobctl/lab/ca.crt"  # relative paths: from the config file's folder
       cert = "lab/alice.crt"
       key = "lab/alice.key"
       tls-server-name = "worker1"         # optional: the name the server's certificate holds

4. the default server `localhost:50051`.

An identity is either a user name (`<certs>/<name>.crt`, `.key`, `ca.crt`) or the three files; one
source gives the whole identity (the files of a context are not mixed with an environment's user).

This module needs only light parts of the standard library (not even pathlib; tomllib only when a
config file exists), so that jobctl resolves its settings before importing grpc.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, NamedTuple

from jobclient.errors import ConfigError

__all__ = [
    "CERTS_ENV",
    "CONFIG_ENV",
    "CONTEXT_ENV",
    "DEFAULT_PORT",
    "ConfigError",
    "Context",
    "Settings",
    "config_path",
    "load_contexts",
    "normalize_target",
    "resolve",
]

CERTS_ENV = "JOBCTL_CERTS"
"""Environment variable naming the folder `Credentials.for_user` reads `<name>.crt/.key` and `ca.crt` from."""
CONFIG_ENV = "JOBCTL_CONFIG"
CONTEXT_ENV = "JOBCTL_CONTEXT"
DEFAULT_PORT = 50051
DEFAULT_SERVER = f"localhost:{DEFAULT_PORT}"
_CONTEXT_KEYS = {"server", "ca", "cert", "key", "tls-server-name"}


class Context(NamedTuple):
    """One `[contexts.NAME]` table, its paths made absolute."""

    name: str
    server: str | None = None
    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    tls_server_name: str | None = None


class Settings(NamedTuple):
    """Where to connect and with which identity: `user` (+ `certs`), or `cert`, `key` and `ca`."""

    target: str
    user: str | None
    certs: str | None
    cert: str | None
    key: str | None
    ca: str | None
    tls_server_name: str | None
    context: str | None
    """The context the settings came from in part, if any."""


def normalize_target(server: str) -> str:
    """`host` -> `host:50051`; `host:port`, `[v6]:port`, `unix:...` and `dns:///...` unchanged."""
    server = server.strip()
    if not server:
        raise ConfigError("the server address is empty")
    if "://" in server or server.startswith(("unix:", "unix-abstract:", "ipv4:", "ipv6:", "dns:")):
        return server
    if server.startswith("["):
        return server if "]:" in server else f"{server}:{DEFAULT_PORT}"
    colons = server.count(":")
    if colons == 0:
        return f"{server}:{DEFAULT_PORT}"
    if colons > 1:  # a bare IPv6 address
        return f"[{server}]:{DEFAULT_PORT}"
    return server


def config_path(environ: Mapping[str, str] | None = None) -> str:
    """$JOBCTL_CONFIG, else ~/.config/jobctl/config.toml."""
    env = os.environ if environ is None else environ
    return os.path.expanduser(env.get(CONFIG_ENV) or "~/.config/jobctl/config.toml")


def _path(value: object, key: str, where: str, base: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: {key} must be a non-empty string")
    return os.path.join(base, os.path.expanduser(value))  # an absolute value stays as it is


def load_contexts(path: str) -> tuple[str | None, dict[str, Context]]:
    """(current-context, contexts) of the config file at `path`; (None, {}) when it does not exist."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None, {}
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
    import tomllib

    try:
        doc: dict[str, Any] = tomllib.loads(data.decode())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file {path} is not valid TOML: {e}") from None
    unknown = set(doc) - {"current-context", "contexts"}
    if unknown:
        raise ConfigError(f"config file {path}: unknown key(s) {', '.join(sorted(unknown))}")
    current = doc.get("current-context")
    if current is not None and not isinstance(current, str):
        raise ConfigError(f"config file {path}: current-context must be a string")
    tables = doc.get("contexts", {})
    if not isinstance(tables, dict):
        raise ConfigError(f"config file {path}: contexts must be a table of [contexts.NAME] tables")
    contexts = {}
    for name, table in tables.items():
        where = f"config file {path}, context {name!r}"
        if not isinstance(table, dict):
            raise ConfigError(f"{where}: must be a table")
        unknown = set(table) - _CONTEXT_KEYS
        if unknown:
            raise ConfigError(
                f"{where}: unknown key(s) {', '.join(sorted(unknown))} "
                f"(known: {', '.join(sorted(_CONTEXT_KEYS))})"
            )
        base = os.path.dirname(os.path.abspath(path))
        files = {k: _path(table[k], k, where, base) for k in ("ca", "cert", "key") if k in table}
        if files and len(files) != 3:
            missing = sorted({"ca", "cert", "key"} - set(files))
            raise ConfigError(f"{where}: ca, cert and key go together: missing {', '.join(missing)}")
        server = table.get("server")
        if server is not None and (not isinstance(server, str) or not server):
            raise ConfigError(f"{where}: server must be a non-empty string")
        tls_name = table.get("tls-server-name")
        if tls_name is not None and (not isinstance(tls_name, str) or not tls_name):
            raise ConfigError(f"{where}: tls-server-name must be a non-empty string")
        contexts[name] = Context(name, server, files.get("ca"), files.get("cert"), files.get("key"), tls_name)
    if current is not None and current not in contexts:
        raise ConfigError(f"config file {path}: current-context {current!r} names no [contexts.{current}]")
    return current, contexts


def resolve(
    *,
    server: str | None = None,
    user: str | None = None,
    certs: str | None = None,
    cert: str | None = None,
    key: str | None = None,
    ca: str | None = None,
    tls_server_name: str | None = None,
    context: str | None = None,
    environ: Mapping[str, str] | None = None,
    require_identity: bool = True,
) -> Settings:
    """Settings from explicit values, then the environment, then the selected context (see module doc).

    Raises ConfigError for conflicting or incomplete settings, an unknown context or a bad file.
    """
    env = os.environ if environ is None else environ
    path = config_path(env)
    wanted = context or env.get(CONTEXT_ENV) or None
    current, contexts = load_contexts(path)
    selected: Context | None = None
    if wanted is not None:
        selected = contexts.get(wanted)
        if selected is None:
            known = ", ".join(sorted(contexts)) or "none"
            raise ConfigError(f"no context {wanted!r} in {path} (contexts: {known})")
    elif current is not None:
        selected = contexts[current]

    files = (cert, key, ca)
    if user is not None and any(files):
        raise ConfigError("give either --user or --cert/--key/--ca, not both")
    if user is None and not any(files):
        env_files = (env.get("JOBCTL_CERT"), env.get("JOBCTL_KEY"), env.get("JOBCTL_CA"))
        env_user = env.get("JOBCTL_USER") or None
        if env_user and any(env_files):
            raise ConfigError("both $JOBCTL_USER and $JOBCTL_CERT/$JOBCTL_KEY/$JOBCTL_CA are set: unset one")
        user, files = env_user, env_files
        if user is None and not any(files) and selected is not None and selected.cert:
            files = (selected.cert, selected.key, selected.ca)
    if user is None and any(files) and not all(files):
        missing = [flag for flag, value in zip(("--cert", "--key", "--ca"), files, strict=True) if not value]
        raise ConfigError(f"--cert, --key and --ca go together: missing {', '.join(missing)}")
    if require_identity and user is None and not any(files):
        if selected is not None:
            hint = f" (context {selected.name!r} of {path} names no certificate)"
        else:
            hint = f", or select a context of {path} with --context NAME" if contexts else ""
        raise ConfigError(
            f"who are you? give --user NAME (or set $JOBCTL_USER), or --cert, --key and --ca{hint}"
        )
    target = server or env.get("JOBCTL_SERVER") or (selected.server if selected else None) or DEFAULT_SERVER
    tls_name = (
        tls_server_name
        or env.get("JOBCTL_TLS_SERVER_NAME")
        or (selected.tls_server_name if selected else None)
        or None
    )
    return Settings(
        target=normalize_target(target),
        user=user,
        certs=certs,
        cert=files[0],
        key=files[1],
        ca=files[2],
        tls_server_name=tls_name,
        context=selected.name if selected else None,
    )
