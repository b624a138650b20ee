"""A throwaway OpenSSH server on 127.0.0.1 with one multiplexed client connection: the bench's baseline.

A Python port of /work/shared/bench/ssh-anchor.sh (the team's shared script), copied here so that
`bench/run_all.py` does not depend on the shared folder at run time. Same behaviour: everything lives in
one directory (host and user keys, sshd_config, pid file, control socket); the only change outside it is
the throwaway public key appended to root's authorized_keys, which `stop()` removes again (and the file
itself when this created it). One addition: `SetEnv SHLVL=1` in sshd_config (see `start()`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

AUTHORIZED_KEYS = Path("/root/.ssh/authorized_keys")
SSHD = "/usr/sbin/sshd"


class SshUnavailable(Exception):
    """No sshd/ssh here (and not installable): the ssh baselines are skipped."""


def ensure_installed(install: bool) -> None:
    """openssh-server/-client present, installing them with apt-get (as root) when allowed."""
    if os.path.exists(SSHD) and shutil.which("ssh"):
        return
    if not install or os.geteuid() != 0 or not shutil.which("apt-get"):
        raise SshUnavailable("openssh-server is not installed (run as root, or apt-get install it)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (
        ["apt-get", "update", "-qq"],
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "openssh-server", "openssh-client"],
    ):
        subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, timeout=600)
    if not os.path.exists(SSHD):
        raise SshUnavailable("apt-get ran but /usr/sbin/sshd is still missing")


class SshAnchor:
    """`start()` runs sshd on 127.0.0.1:`port` and opens the multiplexing master; `argv` is the prefix."""

    def __init__(self, directory: Path, port: int, bashrc: bool = False) -> None:
        self.dir = directory
        self.port = port
        self.bashrc = bashrc
        self.pid: int | None = None
        self._key_added = False
        self._created_file = self._created_dir = False
        self.argv: list[str] = [
            "ssh",
            "-p",
            str(port),
            "-i",
            str(directory / "userkey"),
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "LogLevel=ERROR",
            "-o",
            "BatchMode=yes",
            "-o",
            f"ControlPath={directory / 'cm'}",
            "root@127.0.0.1",
        ]

    def new_connection_argv(self) -> list[str]:
        """`argv` with multiplexing off: each command makes (and tears down) its own connection. ssh
        keeps the first value of an option, so the ControlPath is dropped rather than overridden."""
        options = self.argv[1:-1]
        kept: list[str] = []
        for flag, value in zip(options[::2], options[1::2], strict=True):
            if not value.startswith("ControlPath="):
                kept += [flag, value]
        return ["ssh", *kept, "-o", "ControlMaster=no", "-o", "ControlPath=none", self.argv[-1]]

    def _save(self) -> None:
        """What `stop()` needs, in the directory: a supervisor can stop what a dead process started."""
        state = {"port": self.port, "pid": self.pid, "key_added": self._key_added}
        state |= {"created_file": self._created_file, "created_dir": self._created_dir}
        (self.dir / "anchor.json").write_text(json.dumps(state))

    @classmethod
    def load(cls, directory: Path) -> SshAnchor | None:
        """The anchor `_save()` described in `directory`, or None."""
        try:
            state = json.loads((directory / "anchor.json").read_text())
        except (OSError, ValueError):
            return None
        anchor = cls(directory, int(state["port"]))
        anchor.pid = state.get("pid")
        anchor._key_added = bool(state.get("key_added"))
        anchor._created_file = bool(state.get("created_file"))
        anchor._created_dir = bool(state.get("created_dir"))
        return anchor

    def _pubkey(self) -> str:
        return (self.dir / "userkey.pub").read_text().strip()

    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        for name in ("hostkey", "userkey"):
            if not (self.dir / name).exists():
                subprocess.run(
                    ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.dir / name)],
                    check=True,
                    timeout=30,
                )
        Path("/run/sshd").mkdir(parents=True, exist_ok=True)
        self._created_dir = not AUTHORIZED_KEYS.parent.exists()
        self._created_file = not AUTHORIZED_KEYS.exists()
        AUTHORIZED_KEYS.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        AUTHORIZED_KEYS.touch(mode=0o600, exist_ok=True)
        pub = self._pubkey()
        if pub not in AUTHORIZED_KEYS.read_text():
            with AUTHORIZED_KEYS.open("a") as f:
                f.write(pub + "\n")
        self._key_added = True
        self._save()
        config = self.dir / "sshd_config"
        config.write_text(
            f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {self.dir / 'hostkey'}\n"
            "PermitRootLogin prohibit-password\nPasswordAuthentication no\n"
            f"PidFile {self.dir / 'sshd.pid'}\nUsePAM no\n" + ("" if self.bashrc else "SetEnv SHLVL=1\n")
            # bash sources ~/.bashrc for a command run by sshd only as a top-level shell (SHLVL < 2):
            # SHLVL=1 keeps the login user's shell start-up files (root's runs `pyenv init` here,
            # ~130 ms) out of the baseline, which is to measure ssh itself. Not in ssh-anchor.sh.
        )
        subprocess.run([SSHD, "-f", str(config)], check=True, timeout=30)
        for _ in range(50):  # bounded: 50 x 0.1 s
            if (self.dir / "sshd.pid").exists():
                self.pid = int((self.dir / "sshd.pid").read_text().split()[0])
                self._save()
                break
            time.sleep(0.1)
        master = [*self.argv[:-1], "-o", "ControlMaster=yes", "-o", "ControlPersist=900", "-fN"]
        for _ in range(10):  # bounded, as the shell script: 10 tries, 0.3 s apart
            if (
                subprocess.run(
                    [*master, self.argv[-1]], timeout=30, stderr=subprocess.DEVNULL, check=False
                ).returncode
                == 0
            ):
                break
            time.sleep(0.3)
        check = subprocess.run([*self.argv, "-O", "check"], capture_output=True, timeout=30, check=False)
        if check.returncode != 0:
            raise SshUnavailable(f"ssh multiplexing master did not come up: {check.stderr.decode().strip()}")

    def stop(self) -> None:
        """Close the master, stop sshd, remove our key from authorized_keys; each step best effort."""
        if (self.dir / "cm").exists():
            subprocess.run(
                [*self.argv, "-O", "exit"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=30,
                check=False,
            )
        if self.pid is not None:
            try:
                cmdline = Path(f"/proc/{self.pid}/cmdline").read_bytes()
            except OSError:
                cmdline = b""
            if os.fsencode(str(self.dir)) in cmdline:  # ours (sshd -f DIR/sshd_config), not a reused pid
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGTERM)
            self.pid = None
        if self._key_added and (self.dir / "userkey.pub").exists() and AUTHORIZED_KEYS.exists():
            pub = self._pubkey()
            lines = AUTHORIZED_KEYS.read_text().splitlines(keepends=True)
            kept = [line for line in lines if line.strip() != pub]
            if len(kept) != len(lines):
                tmp = AUTHORIZED_KEYS.with_name(AUTHORIZED_KEYS.name + ".bench-tmp")
                tmp.write_text("".join(kept))
                os.chmod(tmp, 0o600)
                os.replace(tmp, AUTHORIZED_KEYS)
            self._key_added = False
            with contextlib.suppress(OSError):
                self._save()
            # Leave no trace: a file (and folder) that we created and that is empty again goes too.
            if self._created_file and AUTHORIZED_KEYS.stat().st_size == 0:
                AUTHORIZED_KEYS.unlink()
                if self._created_dir:
                    with contextlib.suppress(OSError):
                        AUTHORIZED_KEYS.parent.rmdir()
