"""Garbage-collector settings for a process that moves many jobs: `tune_gc`."""

from __future__ import annotations

import gc

GEN0_THRESHOLD = 10_000


def tune_gc(gen0_threshold: int = GEN0_THRESHOLD) -> None:
    """Make Python's cyclic garbage collector cheaper for a process that moves many jobs.

    Every job allocates a few dozen containers (its row, model, events, reply), so with
    Python's default generation-0 threshold of 700 the collector runs every few dozen jobs, and
    its older generations rescan the whole heap of imported libraries. Two changes:

    - ``gc.freeze()``: what is alive now (modules, plugins, the open app) moves to a permanent
      generation that collections no longer scan;
    - the generation-0 threshold goes to ``gen0_threshold`` (the older ones keep their ratios).

    Measured on the embedded drain: ~34 to ~28 µs of CPU per job (tests/benchmarks/RESULTS.md).
    Both settings are process-wide, so Conveyor's own processes (``conveyor serve``, ``conveyor
    worker``) apply them after start-up and an application embedding Conveyor decides for
    itself: call this once its start-up is done. Cycles are still collected, just in larger
    batches; memory held by short-lived garbage grows by at most a few MB.
    """
    if gen0_threshold < 1:
        raise ValueError(f"gen0_threshold must be positive, got {gen0_threshold}")
    gc.collect()  # garbage from start-up is freed, not frozen
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(gen0_threshold, older, oldest)
