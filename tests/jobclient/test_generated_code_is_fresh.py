"""The checked-in generated code matches the .proto (tools/gen_proto.py --check)."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from jobclient.proto.jobworker.v1 import jobworker_pb2, jobworker_pb2_grpc

ROOT = Path(__file__).resolve().parents[2]
GEN_PROTO = ROOT / "tools" / "gen_proto.py"


def _load_gen_proto() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_proto", GEN_PROTO)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_checked_in_generated_code_is_up_to_date() -> None:
    done = subprocess.run(
        [sys.executable, str(GEN_PROTO), "--check"], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, f"generated code is stale; run `make proto`:\n{done.stderr}"


def test_check_names_a_stale_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gen_proto = _load_gen_proto()
    copy = tmp_path / "proto"
    shutil.copytree(gen_proto.OUT_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
    assert gen_proto.check(copy) == 0  # the .proto source beside the code is not "not generated"
    stale = copy / "jobworker" / "v1" / "jobworker_pb2_grpc.py"
    stale.write_text(stale.read_text() + "\n# hand edit\n")
    (copy / "leftover_pb2.py").write_text("")

    assert gen_proto.check(copy) == 1
    err = capsys.readouterr().err
    assert f"stale or missing: {stale}" in err
    assert f"not generated (remove it): {copy / 'leftover_pb2.py'}" in err


def test_generated_code_imports_as_part_of_jobclient() -> None:
    assert jobworker_pb2.DESCRIPTOR.name == "jobworker/v1/jobworker.proto"
    assert jobworker_pb2_grpc.JobWorkerStub.__module__ == "jobclient.proto.jobworker.v1.jobworker_pb2_grpc"
