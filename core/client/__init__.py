"""Talk to a hosted Conveyor with the embedded API: ``conveyor.connect(url)``.

The URL picks the transport, so code moves between embedded and hosted by changing it:
``sqlite:///jobs.db`` / ``postgresql://...`` (embedded `Conveyor`), ``http://host:6790``
(REST), ``tcp://host:6789`` (line protocol, pipelined: the fast path for workers). Errors are
the kernel's `ConveyorError` subclasses, rebuilt from the wire code.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from ..app import Conveyor
from ..errors import ValidationError
from ..sync import API, Blocking, forward_api
from ._api import Client, Transport
from ._http import HttpTransport
from ._tcp import TcpTransport

__all__ = ["Client", "HttpTransport", "SyncClient", "TcpTransport", "Transport", "connect", "connect_sync"]


def connect(url: str, *, token: str | None = None, timeout_s: float = 30.0, **options: Any) -> Conveyor | Client:
    """An unopened queue for ``url``; use it as ``async with connect(url) as queue``.
    ``options`` are `Conveyor` settings for an embedded URL; ``token`` and ``timeout_s`` are
    for a server."""
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme in ("http", "https"):
        _port(url)
        return Client(HttpTransport(url, token=token, timeout_s=timeout_s), url)
    if scheme == "tcp":
        port = _port(url)
        host = urlsplit(url).hostname
        if not host:
            raise ValidationError(f"url {url!r} names no host: use tcp://host:6789", field="url")
        return Client(TcpTransport(host, port or 6789, token=token, timeout_s=timeout_s), url)
    return Conveyor(url, **options)


def _port(url: str) -> int | None:
    """The port a server URL names, if any; a malformed one is the caller's input error."""
    try:
        return urlsplit(url).port
    except ValueError as exc:  # "Port out of range 0-65535", "Port could not be cast to integer value"
        raise ValidationError(f"url {url!r}: {exc}", field="url") from None


class SyncClient(Blocking):
    """The blocking form of whatever `connect` gives: ``with connect_sync(url) as queue``."""


forward_api(SyncClient, Client, API)


def connect_sync(url: str, **kwargs: Any) -> SyncClient:
    """`connect`, blocking: every method waits for its result."""
    return SyncClient(connect(url, **kwargs))
