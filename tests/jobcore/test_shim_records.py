"""The shim writes its records (shim.json, run.json, exit.json) and the launcher reads a job's spec
through short paths of their own (string paths, the converter's unstructure functions looked up once,
os-level reads: less of the launcher's Python run in every freshly forked shim, docs/benchmarks.md,
"What a shim's pages are"). They must give exactly what `records.write`, `records.unstructure` and
`records.read` give."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jobcore import jobdir, records, shim
from jobcore.errors import CorruptStateFile
from jobcore.records import ExitRecord, RunRecord, ShimRecord, SpecRecord
from jobcore.spec import Limits, RunAs
from jobcore.status import JobState, ResourceUsage

SAMPLES = [
    ShimRecord(pid=4242, start_ticks=123456),
    ShimRecord(pid=1, start_ticks=None),
    RunRecord(pid=77, started_at=1764655200.25, start_ticks=99),
    ExitRecord(JobState.EXITED, ended_at=1.5, exit_code=0, output_bytes=12),
    ExitRecord(
        JobState.KILLED,
        ended_at=2.0,
        signal=9,
        oom_killed=True,
        usage=ResourceUsage(cpu_seconds=0.25, memory_peak_bytes=1 << 20, io_read_bytes=0, io_write_bytes=5),
        output_capped=True,
        reason="killed by the OOM killer (memory limit reached)",
    ),
    ExitRecord(JobState.FAILED_TO_START, ended_at=3.0, reason="cannot run 'x'", stage="exec", errno=2),
]


@pytest.mark.parametrize("record", SAMPLES, ids=lambda r: type(r).__name__)
def test_the_shims_records_are_what_records_write_writes(record: object, tmp_path: Path) -> None:
    assert shim.unstructure(record) == records.unstructure(record)  # type: ignore[arg-type]
    records.write(tmp_path / "expected.json", record)
    shim.write_record(f"{tmp_path}/got.json", record, durable=True)  # type: ignore[arg-type]
    assert (tmp_path / "got.json").read_bytes() == (tmp_path / "expected.json").read_bytes()
    assert records.read(tmp_path / "got.json", type(record)) == record


def test_write_json_writes_what_json_dumps_writes(tmp_path: Path) -> None:
    data = {"a": 1, "b": [1.5, None, True], "c": 'é"\n', "d": {"e": {}}}
    jobdir.write_json(tmp_path / "x.json", data)
    assert (tmp_path / "x.json").read_text() == json.dumps(data, separators=(",", ":"))
    assert not [p.name for p in tmp_path.iterdir() if p.name != "x.json"]  # no temporary file left


def _spec(tmp_path: Path) -> SpecRecord:
    spec = SpecRecord(
        id="00000000-0000-4000-8000-000000000000",
        owner="alice",
        argv=("sh", "-c", "true"),
        cwd="/",
        namespaces=("pid", "mount"),
        limits=Limits(),
        controller="none",
        created_at=1.0,
        env={"PATH": "/bin"},
        cgroup={"backend": "none", "handle": "jobcore.controllers.none:NoneHandle"},
        user=RunAs(500000, 500000),
    )
    records.write(tmp_path / jobdir.SPEC, spec)
    return spec


def test_the_launchers_prepare_reads_what_records_read_reads(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    got, handle = shim.prepare(str(tmp_path))
    assert got == spec == records.read(tmp_path / jobdir.SPEC, SpecRecord)
    assert type(handle).__name__ == "NoneHandle"


def test_a_damaged_spec_fails_the_launchers_prepare_and_the_shim_records_why(tmp_path: Path) -> None:
    _spec(tmp_path)
    data = json.loads((tmp_path / jobdir.SPEC).read_text())
    data["created_at"] = "yesterday"
    (tmp_path / jobdir.SPEC).write_text(json.dumps(data))
    with pytest.raises(CorruptStateFile):
        shim.prepare(str(tmp_path))
    # ... and the shim's own reading (when the launcher passes no prepared job) names file and field
    with pytest.raises(CorruptStateFile, match=r"spec\.json.*created_at"):
        shim._prepare_again(str(tmp_path))
    (tmp_path / jobdir.SPEC).unlink()
    with pytest.raises(FileNotFoundError):
        shim.prepare(str(tmp_path))
    with pytest.raises(RuntimeError, match=r"no spec\.json"):
        shim._prepare_again(str(tmp_path))


def test_write_json_to_a_relative_path_writes_beside_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    jobdir.write_json("rel.json", {"x": 1}, durable=True)
    jobdir.write_json(Path("sub.json"), {"y": 2})
    assert json.loads((tmp_path / "rel.json").read_text()) == {"x": 1}
    assert json.loads((tmp_path / "sub.json").read_text()) == {"y": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rel.json", "sub.json"]
