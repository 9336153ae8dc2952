"""An incremental Server-Sent Events decoder: bytes in, events out, no I/O.

It follows the WHATWG event-stream rules that matter for OpenRouter: lines end in LF, CR or
CRLF (a CRLF may be split across two reads), ``:`` lines are comments (OpenRouter's
keep-alives), ``data:`` lines of one event are joined with ``\\n``, a blank line dispatches,
and a UTF-8 BOM at the very start is dropped. Work is per line, never per byte.
"""

from __future__ import annotations

from typing import NamedTuple

_BOM = b"\xef\xbb\xbf"


class SSEEvent(NamedTuple):
    """One dispatched event; ``id`` is the last event id seen so far (it persists by spec).

    A NamedTuple rather than a frozen dataclass: one is built per streamed token, and tuple
    construction is several times cheaper.
    """

    data: str
    event: str = "message"
    id: str = ""
    retry: int | None = None


class SSEDecoder:
    """Feed raw bytes as they arrive; get back the events they complete.

    Usage: ``for ev in decoder.feed(chunk): ...`` for every read, then ``decoder.close()``
    at EOF. ``comments`` counts comment lines (keep-alives), for tests and metrics.
    """

    __slots__ = (
        "_data",
        "_event",
        "_first_line",
        "_last_id",
        "_pending",
        "_retry",
        "_skip_lf",
        "comments",
    )

    def __init__(self) -> None:
        # Bytes of a line not yet terminated; kept as pieces so a long line that arrives in
        # many reads is joined once, not re-copied on every read.
        self._pending: list[bytes] = []
        # The previous read ended in CR: a LF at the start of the next read belongs to it.
        self._skip_lf = False
        self._first_line = True
        self._data: list[bytes] = []
        self._event = b""
        self._last_id = ""
        self._retry: int | None = None
        self.comments = 0

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """Decode one read; returns the events completed by it (often none, often one)."""
        if not chunk:
            return []
        if self._skip_lf:
            self._skip_lf = False
            if chunk[0] == 0x0A:
                chunk = chunk[1:]
                if not chunk:
                    return []
        if chunk.find(b"\n") < 0 and chunk.find(b"\r") < 0:
            self._pending.append(chunk)
            return []
        if self._pending:
            self._pending.append(chunk)
            chunk = b"".join(self._pending)
            self._pending.clear()
        # bytes.splitlines splits on LF, CR and CRLF only: exactly the SSE line ends.
        lines = chunk.splitlines()
        last = chunk[-1]
        if last == 0x0D:
            self._skip_lf = True
        elif last != 0x0A:
            self._pending.append(lines.pop())
        if self._first_line and lines:
            self._first_line = False
            if lines[0].startswith(_BOM):
                lines[0] = lines[0][3:]
        events: list[SSEEvent] = []
        data = self._data
        for line in lines:
            if not line:
                event = self._dispatch()
                if event is not None:
                    events.append(event)
                    data = self._data
            elif line.startswith(b"data:"):
                # The hot path: OpenRouter sends nothing but data lines and comments.
                value = line[5:]
                data.append(value[1:] if value[:1] == b" " else value)
            else:
                self._field(line)
        return events

    def close(self) -> list[SSEEvent]:
        """End of stream: dispatch an event whose lines all ended but lacked the blank line.

        An unterminated last line is dropped, since it may be cut short (the spec drops the
        whole pending event; keeping its complete lines lets ``data: [DONE]\\n`` count).
        """
        self._pending.clear()
        self._skip_lf = False
        event = self._dispatch()
        return [event] if event is not None else []

    def _field(self, line: bytes) -> None:
        """A non-empty line other than ``data:``: a comment or another field."""
        colon = line.find(b":")
        if colon == 0:
            self.comments += 1
            return
        if colon < 0:
            name, value = line, b""
        else:
            name = line[:colon]
            value = line[colon + 1 :]
            if value[:1] == b" ":
                value = value[1:]
        if name == b"data":
            self._data.append(value)
        elif name == b"event":
            self._event = value
        elif name == b"id":
            if b"\x00" not in value:
                self._last_id = value.decode("utf-8", "replace")
        elif name == b"retry" and value.isdigit():
            self._retry = int(value)
        # Any other field name is ignored, as the spec requires.

    def _dispatch(self) -> SSEEvent | None:
        data, event = self._data, self._event
        self._event = b""
        if not data:
            return None
        self._data = []
        text = (data[0] if len(data) == 1 else b"\n".join(data)).decode("utf-8", "replace")
        return SSEEvent(
            data=text,
            event=event.decode("utf-8", "replace") if event else "message",
            id=self._last_id,
            retry=self._retry,
        )
