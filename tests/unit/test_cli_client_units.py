"""The client command line's pieces: URL checks, the table renderer and JSON output."""

from __future__ import annotations

import io
import json
import unicodedata

import pytest

from conveyor import Conveyor, ValidationError, connect
from conveyor._cli_client import _json_text, _table, _write

pytestmark = pytest.mark.anyio


def _cells(text: str) -> int:
    """Terminal cells, counted independently of the renderer: wide 2, combining marks 0."""
    return sum(0 if unicodedata.combining(ch) else 2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("tcp://127.0.0.1:notaport", "Port could not be cast"),
        ("tcp://127.0.0.1:99999", "Port out of range"),
        ("http://127.0.0.1:notaport", "Port could not be cast"),
        ("https://[::1:6790", "Invalid IPv6 URL"),
    ],
)
def test_connect_refuses_a_malformed_server_url(url: str, problem: str) -> None:
    with pytest.raises(ValidationError, match=problem) as caught:
        connect(url)
    assert caught.value.field == "url" and url in caught.value.message


@pytest.mark.parametrize("url", ["sqlite://jobs.db", "sqlite://jobs.db/x.db", "sqlite://user@/x.db"])
async def test_sqlite_storage_refuses_a_host_part_instead_of_running_in_memory(url: str) -> None:
    with pytest.raises(ValidationError, match="has a host part") as caught:
        await Conveyor(url, maintenance=False).open()
    assert caught.value.field == "storage"


async def test_sqlite_storage_refuses_an_unparsable_url_and_keeps_sqlite_colon_slash_slash_in_memory() -> None:
    with pytest.raises(ValidationError, match="cannot be parsed"):
        await Conveyor("sqlite:jobs.db", maintenance=False).open()
    async with Conveyor("sqlite://", maintenance=False) as app:  # no path: in memory, on purpose
        await app.push("q", "job")
        assert (await app.stats("q")).waiting == 1


def test_table_escapes_control_characters_and_keeps_one_line_per_row() -> None:
    hostile = "a\x1b[2J\x1b]0;owned\x07b\r\nc\tz\x7f\x9b\u202e\u2028\ud800"
    text = _table(["name", "error"], [[hostile, "Traceback:\n  File x\nValueError"]])
    assert len(text.splitlines()) == 3
    assert all(ch == "\n" or ch.isprintable() for ch in text)
    assert r"a\x1b[2J\x1b]0;owned\x07b\r\nc\tz\x7f\x9b\u202e\u2028\ud800" in text
    assert r"Traceback:\n  File x\nValueError" in text


def test_table_columns_line_up_in_terminal_cells_with_wide_characters() -> None:
    text = _table(["name", "state"], [["日本語の名前", "waiting"], ["step-1", "active"], ["e\u0301", "done"]])
    lines = text.splitlines()
    columns = [line.index(state) for line, state in zip(lines, ["state", " -", "w", "a", "d"], strict=True)]
    columns[1] += 1  # the rule under the second column starts after the space
    assert {_cells(line[:i]) for line, i in zip(lines, columns, strict=True)} == {_cells("日本語の名前") + 2}, text


def test_json_output_keeps_text_readable_and_escapes_what_a_terminal_would_obey() -> None:
    value = {"city": "東京", "name": "résumé", "evil": "\x1b[31m\x7f\x9b\u202e", "lone": "\ud800", "emoji": "😀"}
    text = _json_text(value, "utf-8")
    assert "東京" in text and "résumé" in text and "😀" in text
    assert all(ch == "\n" or ch.isprintable() for ch in text)
    assert json.loads(text) == value
    ascii_only = _json_text(value, "ascii")
    assert ascii_only.isascii() and json.loads(ascii_only) == value


def test_write_survives_what_the_stream_cannot_encode() -> None:
    raw = io.BytesIO()
    stream = io.TextIOWrapper(raw, encoding="ascii")
    _write(stream, "東京 \ud800")
    stream.flush()
    assert raw.getvalue() == b"\\u6771\\u4eac \\ud800\n"
