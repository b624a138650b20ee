"""Conversion of jobclient's types to and from JSON (jobctl's --json), with one cattrs converter.

Apart from `_conversions` (protobuf) so that only the commands that print JSON import cattrs.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import Any

import cattrs

from jobclient.models import Job

# Plain dicts; times as ISO 8601 in UTC, states as their lower-case names.
_converter = cattrs.Converter()
_converter.register_unstructure_hook(datetime.datetime, lambda t: t.isoformat())
_converter.register_structure_hook(datetime.datetime, lambda v, _: datetime.datetime.fromisoformat(v))


def job_to_json(job: Job) -> dict[str, Any]:
    """A JSON-serialisable dict of every field of the job, plus its shell-style `exit_status`."""
    data: dict[str, Any] = _converter.unstructure(job)
    data["exit_status"] = job.exit_status
    return data


def job_from_json(data: Mapping[str, Any]) -> Job:
    """The inverse of job_to_json (extra keys such as `exit_status` are ignored)."""
    return _converter.structure({k: v for k, v in data.items() if k != "exit_status"}, Job)
