"""A claimer process for the concurrency tests: waits for a go-file, then pulls and acks
until the queue stays empty, and prints the ids it claimed as one JSON line."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from conveyor import SyncConveyor


def main() -> None:
    url, queue, batch, go_file = sys.argv[1], sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])
    claimed: list[str] = []
    with SyncConveyor(url, maintenance=False, plugin_autoload=False) as app:
        print("ready", flush=True)
        while not go_file.exists():
            time.sleep(0.005)
        empty = 0
        while empty < 3:
            jobs = app.pull(queue, batch, worker_id=f"pid-{__import__('os').getpid()}")
            if not jobs:
                empty += 1
                time.sleep(0.02)
                continue
            empty = 0
            claimed.extend(str(j.id) for j in jobs)
            results = app.ack_batch([{"id": j.id, "result": len(claimed)} for j in jobs])
            assert all(r.ok for r in results), results
    print(json.dumps(claimed), flush=True)


if __name__ == "__main__":
    main()
