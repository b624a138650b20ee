"""Host-side tests of tests/vm/run_vm.py: the exit-code contract and the pieces that need no VM."""

from __future__ import annotations

import importlib.util
import io
import lzma
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("run_vm.py")
_spec = importlib.util.spec_from_file_location("run_vm", SCRIPT)
assert _spec and _spec.loader
run_vm = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(run_vm)


def harness(args: list[str], path: str, ci: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["PATH"] = path
    if ci is not None:
        env["CI"] = ci
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )


def test_no_qemu_exits_77_with_the_reason(tmp_path: Path) -> None:
    r = harness(["--", "tests/vm/v2_smoke"], path=str(tmp_path))
    assert r.returncode == run_vm.EXIT_UNAVAILABLE == 77
    assert "SKIP: cgroup v2 VM unavailable: qemu-system-x86_64 not found" in r.stderr


def test_no_qemu_under_ci_is_a_failure(tmp_path: Path) -> None:
    r = harness(["--", "tests/vm/v2_smoke"], path=str(tmp_path), ci="true")
    assert r.returncode == run_vm.EXIT_UNAVAILABLE_CI == 78
    assert "ERROR: cgroup v2 VM unavailable" in r.stderr
    assert "CI=true" in r.stderr
    # --unavailable-ok does not turn a CI failure into a pass
    r = harness(["--unavailable-ok", "--", "x"], path=str(tmp_path), ci="true")
    assert r.returncode == 78


def test_unavailable_ok_exits_0_but_still_says_skip(tmp_path: Path) -> None:
    r = harness(["--unavailable-ok", "--", "x"], path=str(tmp_path), ci="false")
    assert r.returncode == 0
    assert "SKIP: cgroup v2 VM unavailable" in r.stderr


def test_bad_command_line_exits_64(tmp_path: Path) -> None:
    assert harness(["--env", "NOEQUALS", "--", "x"], path=str(tmp_path)).returncode == 64
    assert harness(["--mem", "lots", "--", "x"], path=str(tmp_path)).returncode == 64
    r = harness(["--stall", "0", "--", "x"], path=str(tmp_path))
    assert r.returncode == 64
    assert "--stall wants a positive number of seconds, got 0" in r.stderr


def test_extract_vmlinux_skips_false_magics_and_finds_the_elf() -> None:
    elf = b"\x7fELF\x02\x01\x01" + bytes(range(256)) * 64
    fake_bzimage = b"MZ setup \x1f\x8b\x08 not really gzip BZh9 nor bzip2" + lzma.compress(elf) + b"tail"
    assert run_vm.extract_vmlinux(fake_bzimage) == elf
    with pytest.raises(run_vm.VMFailedError):
        run_vm.extract_vmlinux(b"MZ" + lzma.compress(b"not an elf"))


def test_module_load_order_puts_dependencies_first_and_skips_builtins(tmp_path: Path) -> None:
    (tmp_path / "modules.dep").write_text(
        "kernel/fs/9p/9p.ko: kernel/net/9p/9pnet.ko kernel/fs/netfs/netfs.ko\n"
        "kernel/net/9p/9pnet.ko:\n"
        "kernel/fs/netfs/netfs.ko: kernel/fs/fscache/fscache.ko\n"
        "kernel/fs/fscache/fscache.ko:\n"
        "kernel/net/9p/9pnet_virtio.ko: kernel/net/9p/9pnet.ko\n"
    )
    (tmp_path / "modules.builtin").write_text("kernel/fs/overlayfs/overlay.ko\n")
    order = run_vm.module_load_order(tmp_path, ("9pnet_virtio", "9p", "overlay"))
    assert order == [
        "kernel/net/9p/9pnet.ko",
        "kernel/net/9p/9pnet_virtio.ko",
        "kernel/fs/fscache/fscache.ko",
        "kernel/fs/netfs/netfs.ko",
        "kernel/fs/9p/9p.ko",
    ]
    with pytest.raises(run_vm.VMFailedError):
        run_vm.module_load_order(tmp_path, ("nosuchmodule",))


@pytest.mark.skipif(shutil.which("cpio") is None, reason="no cpio binary to read the archive back")
def test_cpio_writer_output_is_read_back_by_cpio(tmp_path: Path) -> None:
    c = run_vm._Cpio()
    c.add("bin", 0o040755)
    c.add("bin/hello", 0o100755, b"#!/bin/sh\necho hi\n")
    c.add("odd", 0o100644, b"x" * 5)
    archive = c.finish()
    listing = subprocess.run(["cpio", "-it"], input=archive, capture_output=True, check=True).stdout
    assert listing.decode().split() == ["bin", "bin/hello", "odd"]
    subprocess.run(["cpio", "-id", "--quiet"], input=archive, cwd=tmp_path, check=True)
    assert (tmp_path / "bin" / "hello").read_bytes() == b"#!/bin/sh\necho hi\n"
    assert (tmp_path / "odd").read_bytes() == b"xxxxx"


def _console(chunks: list[tuple[float, bytes]]) -> tuple[int, threading.Thread]:
    """A pipe whose write end gets each chunk after its delay, then closes; returns the read end."""
    r, w = os.pipe()

    def feed() -> None:
        try:
            for delay, data in chunks:
                time.sleep(delay)
                os.write(w, data)
        finally:
            os.close(w)

    t = threading.Thread(target=feed, daemon=True)
    t.start()
    return r, t


def test_a_console_that_keeps_talking_is_copied_whole_with_plain_newlines() -> None:
    # 3.6 s in all, more than twice the stall, but never more than 0.1 s between two bytes: no stall.
    r, feeder = _console([(0.1, b"boot\r"), (0.1, b"\nok \r\n"), (0.1, b"tests ..\r\n")] * 12)
    out = io.BytesIO()
    try:
        t0 = time.monotonic()
        run_vm.stream_console(r, out, t0, t0 + 60, stall=1.5)
    finally:
        feeder.join()
        os.close(r)
    assert out.getvalue() == b"boot\nok \ntests ..\n" * 12


def test_a_console_silent_for_the_stall_raises_guest_stalled() -> None:
    r, feeder = _console([(0, b"tests/vm/v2_smoke ....."), (3, b"late")])
    out = io.BytesIO()
    try:
        t0 = time.monotonic()
        with pytest.raises(run_vm.GuestStalledError, match="printed nothing for"):
            run_vm.stream_console(r, out, t0, t0 + 60, stall=0.5)
    finally:
        feeder.join()
        os.close(r)
    assert out.getvalue() == b"tests/vm/v2_smoke ....."  # what came before the stall was passed on


def test_the_overall_deadline_still_ends_a_talking_console() -> None:
    r, feeder = _console([(0.05, b".")] * 40)
    out = io.BytesIO()
    try:
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):
            run_vm.stream_console(r, out, t0, t0 + 0.5, stall=30)
    finally:
        feeder.join()
        os.close(r)


def test_the_stall_default_is_above_pytests_own_per_test_timeout() -> None:
    text = (SCRIPT.parents[2] / "pyproject.toml").read_text()
    per_test = float(re.search(r"(?m)^timeout\s*=\s*(\d+)", text).group(1))  # type: ignore[union-attr]
    assert per_test + 60 < run_vm.DEFAULT_STALL
    assert run_vm.parse_args(["--", "x"]).stall == run_vm.DEFAULT_STALL
    assert run_vm.parse_args(["--stall", "5", "--", "x"]).stall == 5
