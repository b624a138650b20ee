"""systemd's readiness protocol (`Type=notify`, sd_notify(3)) with the standard library only.

systemd passes the path of a datagram socket in `$NOTIFY_SOCKET` (a file system path, or `@name` for
the abstract namespace); the service sends newline-separated `KEY=VALUE` assignments to it:
`READY=1` once it serves, `STOPPING=1` when a graceful stop begins, `STATUS=...` for `systemctl status`.
Without `$NOTIFY_SOCKET` (not run by systemd) every call is a no-op.
"""

from __future__ import annotations

import os
import socket

from jobserver.errors import NotifyError

NOTIFY_SOCKET_ENV = "NOTIFY_SOCKET"


def notify(*assignments: str, environ: dict[str, str] | None = None) -> bool:
    """Send `assignments` (e.g. "READY=1", "STATUS=listening") to systemd.

    Returns False when there is no `$NOTIFY_SOCKET` (nothing to tell), True once delivered."""
    env = os.environ if environ is None else environ
    path = env.get(NOTIFY_SOCKET_ENV)
    if not path:
        return False
    if path[0] not in "/@":
        raise NotifyError(f"${NOTIFY_SOCKET_ENV} {path!r} is neither an absolute path nor @abstract")
    address = "\0" + path[1:] if path.startswith("@") else path
    message = "\n".join(assignments).encode("utf-8")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.settimeout(5)
            sock.sendto(message, address)
    except OSError as exc:
        raise NotifyError(f"cannot notify systemd through {path}: {exc.strerror or exc}") from None
    return True
