"""The server's edge: protobuf requests -> jobcore values, jobcore values -> protobuf messages.

Nothing else in the server touches both. Request checks that belong to the server (size caps, job id
syntax, enum values) happen here; what jobcore validates (argv, env names, cwd, limit ranges) is left to
jobcore, whose errors the interceptor maps to INVALID_ARGUMENT.
"""

from __future__ import annotations

import math
import os
import uuid

from jobclient.proto.jobworker.v1 import jobworker_pb2 as pb
from jobcore.errors import InvalidSpec
from jobcore.spec import Isolation, JobSpec, Limits, RunAs
from jobcore.status import JobState, JobStatus
from jobserver.config import WEAKENINGS, ServerConfig
from jobserver.errors import InvalidArgument, PermissionDenied

_STATE_TO_PROTO = {
    JobState.RUNNING: pb.JOB_STATE_RUNNING,
    JobState.EXITED: pb.JOB_STATE_EXITED,
    JobState.KILLED: pb.JOB_STATE_KILLED,
    JobState.FAILED_TO_START: pb.JOB_STATE_FAILED_TO_START,
    JobState.LOST: pb.JOB_STATE_LOST,
}
_LIMIT_FIELDS = {  # proto field -> jobcore Limits field
    "cpu": "cpu",
    "memory_bytes": "memory",
    "pids": "pids",
    "io_read_bps": "io_read_bps",
    "io_write_bps": "io_write_bps",
    "io_read_iops": "io_read_iops",
    "io_write_iops": "io_write_iops",
}


def parse_job_id(text: str) -> str:
    """A job id in canonical UUID form (what jobcore issues); anything else is INVALID_ARGUMENT."""
    if not text:
        raise InvalidArgument("job_id is empty")
    shown = text if len(text) <= 64 else text[:64] + "..."
    try:
        canonical = str(uuid.UUID(text))
    except ValueError:
        raise InvalidArgument(
            f"job_id {shown!r} is not a job id (a UUID such as {uuid.UUID(int=0)})"
        ) from None
    if canonical != text:
        raise InvalidArgument(f"job_id {shown!r} is not in canonical form; use {canonical}")
    return canonical


def _byte_size(text: str) -> int:
    return len(os.fsencode(text))


def limits_from_proto(msg: pb.Limits) -> Limits:
    values: dict[str, float | int] = {}
    for proto_name, core_name in _LIMIT_FIELDS.items():
        if msg.HasField(proto_name):
            values[core_name] = getattr(msg, proto_name)
    cpu = values.get("cpu")
    if cpu is not None and not math.isfinite(cpu):
        raise InvalidArgument(f"limits.cpu must be a finite number of cores, got {cpu}")
    try:
        return Limits(**values)  # type: ignore[arg-type]
    except InvalidSpec as exc:
        raise InvalidArgument(f"limits: {exc}") from None


def requested_weakenings(iso: pb.Isolation) -> list[str]:
    """The isolation weakenings a request asks for (names of config.WEAKENINGS)."""
    asked = [name for name in WEAKENINGS if getattr(iso, name)]
    if iso.disable_mount and "disable_sandbox" not in asked:
        asked.append("disable_sandbox")  # the sandbox's view lives in the job's mount namespace
    return asked


def check_isolation_policy(iso: pb.Isolation, role: str, config: ServerConfig) -> None:
    """PERMISSION_DENIED unless the caller's role may ask for every weakening in the request."""
    allowed = config.role_allow.get(role, frozenset())
    refused = [name for name in requested_weakenings(iso) if name not in allowed]
    if refused:
        raise PermissionDenied(
            f"role {role!r} may not ask for {', '.join(refused)}: the server's policy keeps every "
            "job of this role isolated and sandboxed (see [roles] in the server's config)"
        )


def spec_from_request(
    req: pb.StartJobRequest, owner: str, config: ServerConfig, user: RunAs | None = None
) -> JobSpec:
    """The JobSpec a StartJobRequest asks for, after the server's request caps. `user` is who the job
    runs as (None: the server's own user, i.e. root, for a request allowed run_as_root); the caller
    checks the isolation policy first (check_isolation_policy)."""
    argv = list(req.argv)
    if not argv:
        raise InvalidArgument("argv is empty: give the command to run and its arguments")
    if len(argv) > config.max_argv_count:
        raise InvalidArgument(f"argv has {len(argv)} entries, more than the {config.max_argv_count} allowed")
    argv_bytes = sum(_byte_size(a) + 1 for a in argv)
    if argv_bytes > config.max_argv_bytes:
        raise InvalidArgument(f"argv takes {argv_bytes} bytes, more than the {config.max_argv_bytes} allowed")
    env = dict(req.env)
    if len(env) > config.max_env_count:
        raise InvalidArgument(f"env has {len(env)} entries, more than the {config.max_env_count} allowed")
    env_bytes = sum(_byte_size(k) + _byte_size(v) + 2 for k, v in env.items())
    if env_bytes > config.max_env_bytes:
        raise InvalidArgument(f"env takes {env_bytes} bytes, more than the {config.max_env_bytes} allowed")
    cwd = req.cwd or None
    if cwd is not None and _byte_size(cwd) > config.max_cwd_bytes:
        raise InvalidArgument(f"cwd is longer than {config.max_cwd_bytes} bytes")
    iso = req.isolation
    isolation = Isolation(
        pid=not iso.disable_pid,
        mount=not iso.disable_mount,
        net=not iso.host_network,
        uts=not iso.disable_uts,
        ipc=not iso.disable_ipc,
        sandbox="disable_sandbox" not in requested_weakenings(iso),
    )
    try:
        return JobSpec(
            argv=argv,
            env=env,
            cwd=cwd,
            limits=limits_from_proto(req.limits),
            isolation=isolation,
            owner=owner,
            user=user,
        )
    except InvalidSpec as exc:
        raise InvalidArgument(str(exc)) from None


def stop_grace(req: pb.StopJobRequest, config: ServerConfig) -> float:
    if not req.HasField("grace_seconds"):
        return config.default_stop_grace_seconds
    grace = req.grace_seconds
    if not math.isfinite(grace) or grace < 0:
        raise InvalidArgument(f"grace_seconds must be a finite number of seconds >= 0, got {grace}")
    if grace > config.max_stop_grace_seconds:
        raise InvalidArgument(
            f"grace_seconds of {grace} is above the maximum of {config.max_stop_grace_seconds}"
        )
    return grace


def list_scope(req: pb.ListJobsRequest) -> int:
    """The request's ListScope, validated (an open proto3 enum carries unknown numbers as they came)."""
    if req.scope not in pb.ListScope.values():
        names = ", ".join(pb.ListScope.keys())
        raise InvalidArgument(f"scope {req.scope} is not a known ListScope ({names})")
    return pb.LIST_SCOPE_OWN if req.scope == pb.LIST_SCOPE_UNSPECIFIED else req.scope


def limits_to_proto(limits: Limits) -> pb.Limits:
    msg = pb.Limits()
    for proto_name, core_name in _LIMIT_FIELDS.items():
        value = getattr(limits, core_name)
        if value is not None:
            setattr(msg, proto_name, value)
    return msg


def job_to_proto(status: JobStatus) -> pb.Job:
    job = pb.Job(
        id=status.id,
        owner=status.owner,
        argv=list(status.argv),
        state=_STATE_TO_PROTO.get(status.state, pb.JOB_STATE_UNSPECIFIED),
        oom_killed=status.oom_killed,
        reason=status.reason or "",
        stop_requested=status.stop_requested,
        limits=limits_to_proto(status.limits),
        controller=status.controller,
        namespaces=list(status.namespaces),
        output_bytes=status.output_bytes,
        output_capped=status.output_capped,
        cwd=status.cwd,
        sandboxed=status.sandboxed,
    )
    for name in ("pid", "exit_code", "signal", "started_at", "ended_at", "uid", "gid"):
        value = getattr(status, name)
        if value is not None:
            setattr(job, name, value)
    usage = status.usage
    for name in ("cpu_seconds", "memory_peak_bytes", "io_read_bytes", "io_write_bytes"):
        value = getattr(usage, name)
        if value is not None:
            setattr(job.usage, name, value)
    return job
