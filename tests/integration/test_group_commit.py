"""SQLite group commit: calls that arrive together share one transaction, run first without
savepoints; when one fails, the group is rerun with each call isolated, so the failing call
alone is refused and no partial write of it survives."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest

from conveyor import Conveyor, DuplicateKeyError
from conveyor.plugins.sql import primitives

pytestmark = pytest.mark.anyio


async def test_a_failing_call_in_a_group_is_undone_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # without the pre-check, the unique index fails the batch half way through its insert
    monkeypatch.setattr(primitives, "_check_unique_keys", lambda cur, d, batch: None)
    async with Conveyor(f"sqlite:///{tmp_path / 'g.db'}", maintenance=False, plugin_autoload=False) as app:
        outcomes: dict[str, Any] = {}

        async def call(name: str, fn: Any) -> None:
            try:
                outcomes[name] = await fn()
            except DuplicateKeyError as exc:
                outcomes[name] = exc

        async with anyio.create_task_group() as tg:  # started in one tick: one group
            tg.start_soon(call, "first", lambda: app.push("q", "first", unique_key="k"))
            tg.start_soon(
                call, "batch", lambda: app.push_batch("q", [{"name": "partial"}, {"name": "dup", "unique_key": "k"}])
            )
            tg.start_soon(call, "third", lambda: app.push("q", "third"))
        assert isinstance(outcomes["batch"], DuplicateKeyError)
        assert not isinstance(outcomes["first"], Exception) and not isinstance(outcomes["third"], Exception)
        names = sorted(job.name for job in await app.pull("q", 10))
        assert names == ["first", "third"]  # "partial" was inserted, then rolled back with its call
