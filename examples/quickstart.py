"""Conveyor embedded on its SQLite default (./conveyor.db): push, work, retry, inspect.

Run with `make run` (or `python examples/quickstart.py` inside the virtual environment).
"""

import anyio

from conveyor import Conveyor


async def main() -> None:
    async with Conveyor() as app:  # storage defaults to sqlite:///./conveyor.db
        await app.push("emails", "welcome", {"to": "ada@example.com"}, priority=10)
        await app.push("emails", "digest", {"to": "bob@example.com"}, metadata={"campaign": "weekly"})
        flaky = await app.push("emails", "bounce", {"to": "nobody@invalid"}, max_attempts=2, backoff_delay_ms=0)

        while jobs := await app.pull("emails", count=10, worker_id="quickstart"):
            for job in jobs:
                print(f"working on {job.name} (attempt {job.attempt + 1})")
                await app.progress(job.id, 50, "rendering")
                if job.id == flaky:
                    outcome = await app.fail(job.id, "mailbox does not exist")
                    print(f"  failed; will retry: {outcome.will_retry}")
                else:
                    await app.ack(job.id, {"sent": True})

        print("stats:", (await app.stats("emails")).model_dump())
        print("dead letters:", [(j.name, j.last_error) for j in await app.dlq("emails")])


anyio.run(main)
