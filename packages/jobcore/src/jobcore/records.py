"""What the Worker, the launcher and a job's shim exchange on disk: one attrs class per record of the
job directory (see `jobdir` for the layout), and the one cattrs converter that reads and writes them.

A record is structured *as it was written*: a stored limit is not checked again against today's host
(a host that lost memory or cores must still list the jobs it ran). Validation belongs to new
requests (`jobcore.spec`). Every way a file can be damaged — unreadable, not JSON, a field missing
or of the wrong kind — is a `CorruptStateFile` naming the file and the field, one job's problem.

One name per fact: the start time of a process (in clock ticks since boot, which with its pid names
it for good) is `start_ticks` in `ShimRecord` and `RunRecord` alike (run.json said `pid_start_ticks`
before; both are read).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, TypeVar, cast

import attrs
import cattrs
from cattrs.gen import make_dict_structure_fn

from jobcore import jobdir
from jobcore.errors import CorruptStateFile
from jobcore.spec import Limits, RunAs
from jobcore.status import JobState, JobStatus, ResourceUsage


@attrs.frozen
class SandboxPlan:
    """How the shim builds a sandboxed job's view of the file system (jobcore.sandbox)."""

    #: Paths made inaccessible (the state directory, the caller's keys, ...).
    hide: tuple[str, ...] = ()
    #: The job's scratch directory (its cwd when it named none), bound back into a hidden state dir.
    scratch: str | None = None
    #: An explicit cwd bound at its own path: None (not bound), "ro" or "rw".
    cwd_bind: str | None = None


@attrs.frozen
class SpecRecord:
    """spec.json: what to run, written by the Worker before the shim exists; never changes."""

    id: str
    owner: str
    argv: tuple[str, ...]
    cwd: str
    namespaces: tuple[str, ...]
    #: The limits applied (after defaults and maximums), as written.
    limits: Limits
    #: Name of the resource-controller backend.
    controller: str
    created_at: float
    env: dict[str, str] = attrs.field(factory=dict)
    #: The handle's state (`Handle.to_state()`): what rebuilds the job's cgroup handle anywhere.
    cgroup: dict[str, Any] = attrs.field(factory=dict)
    #: The user the job was asked to run as (None: the Worker's own, with no capabilities).
    user: RunAs | None = None
    #: The uid and gid the command runs as (None in records from before they were written).
    uid: int | None = None
    gid: int | None = None
    sandbox: SandboxPlan | None = None
    output_cap: int | None = None
    #: "module:QualName" of the controller class (records from before handles named their class).
    controller_class: str | None = None


@attrs.frozen
class ShimRecord:
    """shim.json: the shim's host pid and start time, written by the shim first thing."""

    pid: int
    start_ticks: int | None


@attrs.frozen
class RunRecord:
    """run.json: the command started; written by the shim after the exec."""

    pid: int
    started_at: float
    start_ticks: int | None = None


@attrs.frozen
class StopRequest:
    """stop.json: a stop request, written by the Worker; the earliest deadline wins."""

    grace: float
    requested_at: float

    @property
    def deadline(self) -> float:
        return self.requested_at + self.grace


@attrs.frozen
class ExitRecord:
    """exit.json: how the job ended; written by the shim last, or by a Worker for a lost job."""

    state: JobState
    ended_at: float | None = None
    reason: str | None = None
    exit_code: int | None = None
    signal: int | None = None
    oom_killed: bool = False
    usage: ResourceUsage = attrs.field(factory=ResourceUsage)
    output_bytes: int = 0
    output_capped: bool = False
    #: For FAILED_TO_START: the step that failed (jobcore.command.StartError) and its errno.
    stage: str | None = None
    errno: int | None = None


R = TypeVar("R")

#: The record class of each file name.
RECORDS: dict[str, type[Any]] = {
    jobdir.SPEC: SpecRecord,
    jobdir.SHIM: ShimRecord,
    jobdir.RUN: RunRecord,
    jobdir.STOP: StopRequest,
    jobdir.EXIT: ExitRecord,
}


def _strict(kind: type, *kinds: type) -> Any:
    accepted = (kind, *kinds)

    def structure(value: Any, _type: Any) -> Any:
        if isinstance(value, bool) and bool not in accepted:
            raise TypeError(f"expected {kind.__name__}, got a boolean")
        if not isinstance(value, accepted):
            raise TypeError(f"expected {kind.__name__}, got {type(value).__name__}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError("not a finite number")
        return float(cast(float, value)) if kind is float else value

    return structure


def stored_limits(value: Any) -> Limits:
    """Limits as recorded (in a record, a handle's state...): their kinds are checked, and that each
    is positive, but not their sizes against this host. Raises TypeError/ValueError otherwise."""
    return _structure_limits(value, Limits)


def _structure_limits(value: Any, _type: Any) -> Limits:
    """Limits as recorded: their kinds are checked, not their sizes against this host."""
    if not isinstance(value, dict):
        raise TypeError(f"expected an object, got {type(value).__name__}")
    fields = attrs.fields_dict(Limits)
    limits = object.__new__(Limits)
    for name, field in fields.items():
        item = value.get(name)
        if item is not None:
            if name == "io_device":
                item = _strict(str)(item, str)
            elif name == "cpu":
                item = _strict(float, int)(item, float)
            else:
                item = _strict(int)(item, int)
            if name != "io_device" and item <= 0:
                raise ValueError(f"{name} must be positive, got {item}")
        object.__setattr__(limits, name, item if name in value else field.default)
    return limits


def _make_converter() -> cattrs.Converter:
    converter = cattrs.Converter(detailed_validation=True, forbid_extra_keys=False)
    converter.register_structure_hook(int, _strict(int))
    converter.register_structure_hook(float, _strict(float, int))
    converter.register_structure_hook(str, _strict(str))
    converter.register_structure_hook(bool, _strict(bool))
    converter.register_structure_hook(Limits, _structure_limits)
    converter.register_structure_hook(JobState, lambda v, _t: JobState(_strict(str)(v, str)))

    def structure_strings(value: Any, _type: Any) -> tuple[str, ...]:
        # cattrs would take a string for a sequence of strings, one character each (argv "rm -rf"
        # becoming ("r", "m", ...)): a JSON array is a list, and nothing else is one.
        if not isinstance(value, list | tuple):
            raise TypeError(f"expected an array of strings, got {type(value).__name__}")
        return tuple(_strict(str)(item, str) for item in value)

    strings = tuple[str, ...]
    converter.register_structure_hook_func(lambda t: t == strings, structure_strings)
    converter.register_unstructure_hook(JobState, lambda v: v.value)
    run_record = make_dict_structure_fn(RunRecord, converter)

    def structure_run(value: Any, cls: type[RunRecord]) -> RunRecord:
        if isinstance(value, dict) and "start_ticks" not in value and "pid_start_ticks" in value:
            value = {**value, "start_ticks": value["pid_start_ticks"]}  # run.json before one name per fact
        return run_record(value, cls)

    converter.register_structure_hook(RunRecord, structure_run)
    return converter


#: The converter every record goes through.
converter = _make_converter()


def structure(data: Any, cls: type[R], path: Path | str = "<record>") -> R:
    """`data` (parsed JSON) as a `cls`; CorruptStateFile naming `path` and the fields at fault."""
    if not isinstance(data, dict):
        raise CorruptStateFile(path, f"holds a JSON {type(data).__name__}, not an object")
    try:
        return converter.structure(data, cls)
    except Exception as exc:
        if isinstance(exc, cattrs.BaseValidationError):
            found = [m.replace(" @ .", " in field ") for m in cattrs.transform_error(exc, path="")]
        else:
            found = [repr(exc)]
        problems = "; ".join(found)
        raise CorruptStateFile(path, f"is not a valid {cls.__name__}: {problems}") from None


def unstructure(record: Any) -> dict[str, Any]:
    data: dict[str, Any] = converter.unstructure(record)
    return data


def read(path: Path, cls: type[R]) -> R | None:
    """The record in `path`, or None when the file does not exist. Raises CorruptStateFile."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise CorruptStateFile(path, f"cannot be read ({exc.strerror or exc})") from None
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise CorruptStateFile(path, f"is not valid JSON ({len(raw)} bytes: {exc})") from None
    return structure(data, cls, path)


def write(path: Path, record: Any, *, durable: bool = False) -> None:
    """Write `record` atomically (see `jobdir.write_json`)."""
    jobdir.write_json(path, unstructure(record), durable=durable)


def prewarm() -> None:
    """Make the converter build its (generated, compiled) code for every record now: a launcher
    calls this before it forks, so that no shim compiles and holds a copy of its own."""
    spec = SpecRecord(
        id="prewarm",
        owner="prewarm",
        argv=("true",),
        cwd="/",
        namespaces=("pid",),
        limits=Limits(),
        controller="none",
        created_at=0.0,
        user=RunAs(0, 0),
        sandbox=SandboxPlan(hide=("/x",), scratch="/x", cwd_bind="ro"),
    )
    samples = [
        spec,
        ShimRecord(1, 1),
        RunRecord(1, 0.0, 1),
        StopRequest(0.0, 0.0),
        ExitRecord(JobState.EXITED),
    ]
    for record in samples:
        structure(json.loads(json.dumps(unstructure(record))), type(record))


def job_status(
    spec: SpecRecord,
    run: RunRecord | None,
    ended: ExitRecord | None,
    *,
    usage: ResourceUsage | None = None,
    output_bytes: int = 0,
    stop_requested: bool = False,
) -> JobStatus:
    """A job's status: a pure function of its records, plus (while it runs) its live usage and the
    size of its output so far."""
    if ended is not None:
        usage, output_bytes = ended.usage, ended.output_bytes
    return JobStatus(
        id=spec.id,
        owner=spec.owner,
        argv=spec.argv,
        state=JobState.RUNNING if ended is None else ended.state,
        cwd=spec.cwd,
        pid=run.pid if run else None,
        exit_code=ended.exit_code if ended else None,
        signal=ended.signal if ended else None,
        oom_killed=ended.oom_killed if ended else False,
        started_at=run.started_at if run else None,
        ended_at=ended.ended_at if ended else None,
        reason=ended.reason if ended else None,
        stop_requested=stop_requested,
        usage=usage or ResourceUsage(),
        limits=spec.limits,
        controller=spec.controller,
        namespaces=spec.namespaces if run else (),
        output_bytes=output_bytes,
        output_capped=ended.output_capped if ended else False,
        uid=spec.uid,
        gid=spec.gid,
        sandboxed=spec.sandbox is not None,
    )
