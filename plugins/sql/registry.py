"""Webhook registrations: rare writes, so plain SQLAlchemy Core on the `tables` schema."""

from __future__ import annotations

import json
from uuid import UUID

from sqlalchemy import Connection, delete, insert, select

from conveyor.lifecycle import ms_to_dt
from conveyor.webhooks import Webhook

from .tables import webhooks


def insert_webhook(conn: Connection, webhook: Webhook) -> None:
    conn.execute(
        insert(webhooks).values(
            id=webhook.id,
            url=webhook.url,
            events=json.dumps(webhook.events),
            queues=json.dumps(webhook.queues),
            secret=webhook.secret,
            created_at=int(webhook.created_at.timestamp() * 1000),
        )
    )


def list_webhooks(conn: Connection) -> list[Webhook]:
    rows = conn.execute(select(webhooks).order_by(webhooks.c.created_at, webhooks.c.id))
    return [
        Webhook(
            id=row.id if isinstance(row.id, UUID) else UUID(str(row.id)),
            url=row.url,
            events=json.loads(row.events),
            queues=json.loads(row.queues),
            secret=row.secret,
            created_at=ms_to_dt(row.created_at),
        )
        for row in rows
    ]


def delete_webhook(conn: Connection, webhook_id: UUID) -> bool:
    return conn.execute(delete(webhooks).where(webhooks.c.id == webhook_id)).rowcount > 0
