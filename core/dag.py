"""Job dependencies: the rules for ``depends_on``, flows of steps and follow-up chaining.

Runs inside the storage transaction that inserts the jobs (see `Storage.insert_jobs`), with
the parents locked, so a parent cannot fail or be cancelled between the check and the insert.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Any
from uuid import UUID

from . import _limits as limits
from .errors import ValidationError
from .models import FollowUp, Job, JobSpec, JobState, gather_flat_options
from .storage import ResolveParents

DEAD = frozenset({JobState.DLQ, JobState.CANCELLED})


def parent_resolver(labels: Sequence[str], max_depth: int) -> ResolveParents:
    """Check each job's parents and choose its initial state.

    A missing, dead-lettered or cancelled parent is refused (the job could never run); a chain
    of unfinished jobs deeper than ``max_depth`` is refused (completed ancestors do not count);
    a job waits ``blocked`` until every parent has completed. ``labels[i]`` locates job ``i`` in error messages (``options`` or ``jobs[3].options``).
    """

    def resolve(jobs: Sequence[Job], parents: dict[UUID, Job], depths: dict[UUID, int]) -> list[Job]:
        # Jobs come in dependency order (a flow is sorted before it gets here), so a parent
        # inside the batch is always resolved before its children.
        depth_of = dict(depths)
        resolved = []
        for label, job in zip(labels, jobs, strict=True):
            if not job.depends_on:
                depth_of[job.id] = 0
                resolved.append(job)
                continue
            field = f"{label}.depends_on"
            pending = False
            for parent_id in job.depends_on:
                parent = parents.get(parent_id)
                if parent is None:
                    if parent_id in depth_of:  # created in this same batch: not done yet
                        pending = True
                        continue
                    raise ValidationError(f"{field}: parent job {parent_id} does not exist", field=field)
                if parent.state in DEAD:
                    raise ValidationError(
                        f"{field}: parent job {parent_id} is {parent.state.value}, so this job could never run",
                        field=field,
                    )
                pending = pending or parent.state is not JobState.COMPLETED
            unfinished = [p for p in job.depends_on if p not in parents or parents[p].state is not JobState.COMPLETED]
            depth = 1 + max((depth_of.get(p, 0) for p in unfinished), default=-1)
            if depth > max_depth:
                raise ValidationError(
                    f"{field}: the dependency chain would be {depth} deep; the limit is {max_depth}",
                    field=field,
                    details={"depth": depth, "max_depth": max_depth},
                )
            depth_of[job.id] = depth
            resolved.append(Job.trusted({**job.__dict__, "state": JobState.BLOCKED}) if pending else job)
        return resolved

    return resolve


def dependency_order(needs: dict[str, list[str]], where: str = "steps") -> list[str]:
    """Step keys in an order where every step comes after the steps it needs (Kahn's
    algorithm, stable). Refuses unknown keys, self-dependencies and cycles, naming the step."""
    for key, wanted in needs.items():
        for other in wanted:
            if other == key:
                raise ValidationError(f"{where}: step {key!r} needs itself", field=f"{where}.{key}.needs")
            if other not in needs:
                raise ValidationError(
                    f"{where}: step {key!r} needs unknown step {other!r}", field=f"{where}.{key}.needs"
                )
    waiting_on = {key: len(set(wanted)) for key, wanted in needs.items()}
    children: dict[str, list[str]] = {key: [] for key in needs}
    for key, wanted in needs.items():
        for other in set(wanted):
            children[other].append(key)
    ready = deque(key for key in needs if waiting_on[key] == 0)
    order: list[str] = []
    while ready:
        key = ready.popleft()
        order.append(key)
        for child in children[key]:
            waiting_on[child] -= 1
            if waiting_on[child] == 0:
                ready.append(child)
    if len(order) < len(needs):
        cycle = _a_cycle(needs, {key for key, n in waiting_on.items() if n > 0})
        shown = " → ".join(repr(key) for key in [*cycle[:8], cycle[0]])
        raise ValidationError(
            f"{where}: the steps' needs form a cycle: {shown}{' (and more)' if len(cycle) > 8 else ''}",
            field=f"{where}.{cycle[0]}.needs",
            details={"cycle": cycle},
        )
    return order


def _a_cycle(needs: dict[str, list[str]], stuck: set[str]) -> list[str]:
    """One cycle among the ``stuck`` steps (those Kahn's algorithm could not order), each
    step needing the next: not the steps that merely wait downstream of it. Every stuck step
    needs a stuck step, so walking its needs must come back to a step already seen."""
    path: list[str] = []
    seen: dict[str, int] = {}
    key = min(stuck)
    while key not in seen:
        seen[key] = len(path)
        path.append(key)
        key = min(other for other in needs[key] if other in stuck)
    return path[seen[key] :]


def follow_ups_of(metadata: Any) -> list[FollowUp]:
    """The validated ``metadata.follow_ups`` (none when metadata has no such key)."""
    if not isinstance(metadata, dict) or "follow_ups" not in metadata:
        return []
    raw = metadata["follow_ups"]
    field = "options.metadata.follow_ups"
    if not isinstance(raw, list):
        raise ValidationError(f"{field} must be a list of follow-up jobs", field=field)
    follow_ups = []
    for i, item in enumerate(raw):
        follow = limits.parse(FollowUp, gather_flat_options(item, f"{field}[{i}]"), f"{field}[{i}]")
        limits.check_queue_name(follow.queue, f"{field}[{i}].queue")
        follow_ups.append(follow)
    return follow_ups


def follow_up_spec(follow: FollowUp, parent_id: UUID, flow_id: str | None, inherited: Any, result: Any) -> JobSpec:
    """The spec's chaining rules: the parent joins ``depends_on``; ``flow_id`` from the
    follow-up, else the parent's; the parent's metadata minus ``follow_ups`` when the follow-up
    has none; the parent's result as ``data`` when the follow-up has none."""
    own = follow.options
    options = own.model_copy(
        update={
            "depends_on": [*own.depends_on, parent_id],
            "flow_id": own.flow_id or flow_id,
            "metadata": own.metadata if "metadata" in own.model_fields_set else inherited,
        }
    )
    data = follow.data if "data" in follow.model_fields_set else result
    return JobSpec(name=follow.name, data=data, options=options)
