"""UUID v7 job ids: time-ordered, so ids sort roughly by creation like the jobs they name."""

from __future__ import annotations

import os
import struct
import threading
import time
import uuid

_lock = threading.Lock()
_last_ms = 0
_counter = 0
_POOL_WORDS = 512
_unpack_pool = struct.Struct(f">{_POOL_WORDS}Q").unpack
_pool: tuple[int, ...] = ()
"""Random 64-bit words from one ``os.urandom`` call, unpacked at once."""
_next = _POOL_WORDS


def _forget_pool() -> None:
    """A forked child must not hand out the random bits its parent also holds."""
    global _pool, _next
    _pool, _next = (), _POOL_WORDS


os.register_at_fork(after_in_child=_forget_pool)

_new = object.__new__
# UUID's slots, set through their descriptors (UUID refuses attribute assignment): cheaper than
# ``object.__setattr__`` by name, as in `conveyor.models.trusted`
_set_int = uuid.UUID.__dict__["int"].__set__
_set_is_safe = uuid.UUID.__dict__["is_safe"].__set__
_UUID = uuid.UUID
_UNKNOWN = uuid.SafeUUID.unknown
_RAND_B = (1 << 62) - 1
_VARIANT = 0b10 << 62
_MS_MASK = (1 << 48) - 1
_time_ns = time.time_ns


def uuid7() -> uuid.UUID:
    """A UUID v7 (RFC 9562) that is monotonic within this process.

    Within one millisecond the 12-bit ``rand_a`` field is a counter seeded randomly, so ids
    made in a burst still sort in creation order. Random bits come from ``os.urandom`` 4 KB at
    a time, unpacked into 64-bit words in one call: one system call per ~500 ids instead of
    one per id, on every push's hot path.
    """
    return uuid7s(1)[0]


def uuid7s(count: int) -> list[uuid.UUID]:
    """``count`` ids as `uuid7` makes them, in order: a batch's ids under one lock and one
    reading of the clock (0.66 against 1.17 µs per id for 50)."""
    global _last_ms, _counter, _pool, _next
    made: list[uuid.UUID] = []
    with _lock:
        now = _time_ns() // 1_000_000
        i, pool, last, counter = _next, _pool, _last_ms, _counter
        for _ in range(count):
            if i > _POOL_WORDS - 2:
                pool, i = _unpack_pool(os.urandom(_POOL_WORDS * 8)), 0
            rand_b = pool[i] & _RAND_B
            if now > last:  # a new millisecond: the counter starts from another random word
                last, counter = now, pool[i + 1] & 0x7FF
                i += 2
            else:
                i += 1
                counter += 1
                if counter > 0xFFF:
                    last, counter = last + 1, 0
            one = _new(_UUID)  # as `uuid_from_int`, inline: this runs once per job pushed
            _set_int(one, ((last & _MS_MASK) << 16 | 0x7000 | counter) << 64 | _VARIANT | rand_b)
            _set_is_safe(one, _UNKNOWN)
            made.append(one)
        _next, _pool, _last_ms, _counter = i, pool, last, counter
    return made


def uuid_from_int(value: int) -> uuid.UUID:
    """What ``uuid.UUID(int=value)`` builds, without its checks: for a 128-bit ``value`` the
    caller made or parsed from 32 hex digits (on the per-job hot paths, ~4x faster)."""
    made = _new(_UUID)
    _set_int(made, value)
    _set_is_safe(made, _UNKNOWN)
    return made
