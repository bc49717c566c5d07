"""Job dependencies: the rules for a job pushed with ``depends_on``.

Runs inside the storage transaction that inserts the jobs (see `Storage.insert_jobs`), with
the parents locked, so a parent cannot fail or be cancelled between the check and the insert.
"""

from __future__ import annotations

from collections.abc import Sequence
from uuid import UUID

from .errors import ValidationError
from .models import Job, JobState
from .storage import ResolveParents

DEAD = frozenset({JobState.DLQ, JobState.CANCELLED})


def parent_resolver(labels: Sequence[str], max_depth: int) -> ResolveParents:
    """Check each job's parents and choose its initial state.

    A missing, dead-lettered or cancelled parent is refused (the job could never run); a chain
    deeper than ``max_depth`` is refused; a job waits ``blocked`` until every parent has
    completed. ``labels[i]`` locates job ``i`` in error messages (``options`` or ``jobs[3].options``).
    """

    def resolve(jobs: Sequence[Job], parents: dict[UUID, Job], depths: dict[UUID, int]) -> list[Job]:
        resolved = []
        for label, job in zip(labels, jobs, strict=True):
            if not job.depends_on:
                resolved.append(job)
                continue
            field = f"{label}.depends_on"
            for parent_id in job.depends_on:
                parent = parents.get(parent_id)
                if parent is None:
                    raise ValidationError(f"{field}: parent job {parent_id} does not exist", field=field)
                if parent.state in DEAD:
                    raise ValidationError(
                        f"{field}: parent job {parent_id} is {parent.state.value}, so this job could never run",
                        field=field,
                    )
            depth = 1 + max(depths.get(p, 0) for p in job.depends_on)
            if depth > max_depth:
                raise ValidationError(
                    f"{field}: the dependency chain would be {depth} deep; the limit is {max_depth}",
                    field=field,
                    details={"depth": depth, "max_depth": max_depth},
                )
            if all(parents[p].state is JobState.COMPLETED for p in job.depends_on):
                resolved.append(job)
            else:
                resolved.append(Job.trusted({**job.__dict__, "state": JobState.BLOCKED}))
        return resolved

    return resolve
