"""Where things live in jobserver (issue 13): one errors module whose call errors only the interceptor
maps to gRPC codes; the public generated code only; the Worker as a typed Protocol; StreamOutput's
job data reached through `Jobs` only.

The source checks read the package's syntax trees (not its text), so a comment or a docstring that
names `StatusCode` does not count, and an alias (`from grpc import StatusCode as S`) does.
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import grpc
import pytest

import jobserver
from jobcore import JobSpec, Worker
from jobserver import errors
from jobserver.interceptor import CALL_ERROR_CODES, failure_for
from jobserver.worker_api import ControllerAPI, OutputChunks, WorkerAPI

PACKAGE = Path(jobserver.__file__).parent
SOURCES = sorted(PACKAGE.glob("*.py"))


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), str(path))


def _names_a_status(node: ast.AST) -> bool:
    if isinstance(node, ast.Attribute):
        return node.attr == "StatusCode"
    if isinstance(node, ast.ImportFrom):
        return any(a.name == "StatusCode" for a in node.names)
    if isinstance(node, ast.Call):
        return isinstance(node.func, ast.Attribute) and node.func.attr == "abort"
    return False


def _status_code_uses(tree: ast.Module) -> list[int]:
    """Lines naming grpc's StatusCode or calling an abort(): what decides a status code."""
    return [node.lineno for node in ast.walk(tree) if _names_a_status(node)]  # type: ignore[attr-defined]


def test_the_sources_are_found() -> None:
    names = {p.name for p in SOURCES}
    assert {"interceptor.py", "errors.py", "service.py", "jobs.py"} <= names
    # The check below can fail: the interceptor itself names status codes.
    assert _status_code_uses(_tree(PACKAGE / "interceptor.py"))


def test_only_the_interceptor_decides_grpc_status_codes() -> None:
    offenders = {
        path.name: lines
        for path in SOURCES
        if path.name != "interceptor.py" and (lines := _status_code_uses(_tree(path)))
    }
    assert offenders == {}, "raise a domain error from jobserver.errors; interceptor.py maps it"


def test_exceptions_are_defined_in_the_errors_module_only() -> None:
    defined = {}
    for path in SOURCES:
        for node in ast.walk(_tree(path)):
            if isinstance(node, ast.ClassDef) and any(
                isinstance(base, ast.Name) and (base.id.endswith(("Error", "Exception")))
                for base in node.bases
            ):
                defined.setdefault(path.name, []).append(node.name)
    assert set(defined) == {"errors.py"}, defined


def test_every_call_error_is_mapped_to_a_status_code_with_its_message() -> None:
    classes = [
        obj
        for obj in vars(errors).values()
        if inspect.isclass(obj) and issubclass(obj, errors.CallError) and obj is not errors.CallError
    ]
    assert len(classes) >= 9
    for cls in classes:
        failure = failure_for(cls("what the caller reads"))
        assert failure is not None, f"{cls.__name__} has no status code: it would be answered INTERNAL"
        assert failure.code == CALL_ERROR_CODES[cls]
        assert failure.message == "what the caller reads"
    assert len(set(CALL_ERROR_CODES.values())) == len(CALL_ERROR_CODES)  # one class per code


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (errors.InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
        (errors.NotFound, grpc.StatusCode.NOT_FOUND),
        (errors.PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
        (errors.Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
        (errors.QuotaExceeded, grpc.StatusCode.RESOURCE_EXHAUSTED),
        (errors.FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
        (errors.OutOfRange, grpc.StatusCode.OUT_OF_RANGE),
        (errors.DataLoss, grpc.StatusCode.DATA_LOSS),
        (errors.Unavailable, grpc.StatusCode.UNAVAILABLE),
    ],
)
def test_the_codes_clients_see_are_those_of_before(
    error: type[errors.CallError], code: grpc.StatusCode
) -> None:
    failure = failure_for(error("m"))
    assert failure is not None and failure.code == code


def test_the_errors_module_does_not_import_grpc() -> None:
    imported = {
        alias.name.split(".")[0]
        for node in ast.walk(_tree(PACKAGE / "errors.py"))
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in (node.names if isinstance(node, ast.Import) else [ast.alias(node.module or "")])
    }
    assert "grpc" not in imported


def test_jobserver_imports_only_the_public_generated_code() -> None:
    private = {
        path.name: node.lineno
        for path in SOURCES
        for node in ast.walk(_tree(path))
        if (isinstance(node, ast.ImportFrom) and (node.module or "").startswith("jobclient._proto"))
        or (isinstance(node, ast.Import) and any(a.name.startswith("jobclient._proto") for a in node.names))
    }
    assert private == {}
    public = [
        path.name
        for path in SOURCES
        for node in ast.walk(_tree(path))
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("jobclient.proto.")
    ]
    assert "service.py" in public and "server.py" in public  # the check looks at the real imports


def test_the_service_reaches_job_data_through_jobs_only() -> None:
    """StreamOutput goes through Jobs.output / Jobs.indexed_output: the service neither holds the
    Worker nor knows the state directory's layout."""
    tree = _tree(PACKAGE / "service.py")
    attributes = {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
    assert not attributes & {"state_dir", "_worker", "IndexedOutputReader", "tail_offset"}
    modules = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert "jobcore.jobdir" not in modules and "jobcore.errors" not in modules
    assert "_jobs" in attributes


def test_jobcore_worker_has_every_member_of_the_protocol(tmp_path: Path) -> None:
    """mypy checks the signatures (worker_api._jobcore_worker_is_a_worker_api, under `make lint`);
    this checks, on a real Worker, that each member the server uses is there at run time."""
    members = [name for name in vars(WorkerAPI) if not name.startswith("_")] + ["close"]
    assert {"start", "status", "list", "running_count", "stop", "remove", "output", "state_dir"} <= set(
        members
    )
    with Worker(tmp_path / "jobs", controller="none") as worker:
        for name in members:
            assert hasattr(worker, name), f"jobcore.Worker has no {name}, which the server uses"
        assert isinstance(worker.state_dir, Path)
        controller: ControllerAPI = worker.controller
        assert controller.name == "none" and callable(controller.sweep)
        job = worker.start(JobSpec(["true"], owner="alice"))
        reader: OutputChunks = worker.output(job.id, follow=False)
        try:
            assert iter(reader) is reader
        finally:
            reader.close()
