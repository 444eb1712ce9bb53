"""The text formats of ``dhm``: key escaping, JSON lines records, tables, progress.

Kept apart from the command plumbing in ``cli.py`` so each format has one
definition that both directions (print/parse, dump/load) share, and so the
progress display can be tested with a fake clock and a fake terminal.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from collections.abc import Callable, Sequence
from typing import IO, Any

__all__ = [
    "escape_key",
    "unescape_key",
    "encode_record",
    "parse_record",
    "format_table",
    "Progress",
]


# -- keys as text -----------------------------------------------------------------------------

def escape_key(key: bytes) -> str:
    """A key as one printable line that ``unescape_key`` turns back into the same bytes.

    Printable UTF-8 characters stand for themselves (so ``users/café`` reads as
    it is), a backslash is doubled, and every other byte (controls, newline,
    bytes that are not valid UTF-8, non-printable characters) becomes ``\\xHH``.
    The result never holds a newline, so keys can be read back line by line.
    """
    out: list[str] = []
    for char in key.decode("utf-8", "surrogateescape"):
        if char == "\\":
            out.append("\\\\")
        elif "\udc80" <= char <= "\udcff":  # a byte that is not valid UTF-8
            out.append(f"\\x{ord(char) - 0xDC00:02x}")
        elif char.isprintable():
            out.append(char)
        else:
            out.extend(f"\\x{b:02x}" for b in char.encode("utf-8"))
    return "".join(out)


def unescape_key(text: str | bytes) -> bytes:
    """The bytes ``escape_key`` printed: ``\\\\`` is a backslash, ``\\xHH`` a byte.

    Any other backslash sequence is an error rather than a guess, so a key
    typed by hand cannot silently name another key.
    """
    raw = text if isinstance(text, bytes) else text.encode("utf-8", "surrogateescape")
    out = bytearray()
    i = 0
    while i < len(raw):
        byte = raw[i]
        if byte != 0x5C:  # not a backslash
            out.append(byte)
            i += 1
            continue
        if raw[i + 1:i + 2] == b"\\":
            out.append(0x5C)
            i += 2
        elif raw[i + 1:i + 2] == b"x" and len(raw[i + 2:i + 4]) == 2:
            try:
                out.append(int(raw[i + 2:i + 4], 16))
            except ValueError:
                raise ValueError(f"bad escape {raw[i:i + 4]!r} at offset {i}: use \\xHH with two hex digits") from None
            i += 4
        else:
            raise ValueError(f"bad escape at offset {i}: only \\\\ and \\xHH are allowed")
    return bytes(out)


# -- JSON lines (dump/load) -------------------------------------------------------------------

_FIELDS = frozenset({"key", "value", "ttl", "encoding"})
MAX_TTL = 315_360_000  # the node's limit, ten years: checked here so one bad line fails alone


def encode_record(key: bytes, value: bytes, ttl: int | None = None) -> str:
    """One JSON line (without the newline) for ``key`` and ``value``.

    Both are JSON strings when both are valid UTF-8; otherwise both are base64
    and the record says ``"encoding": "base64"``, so a line has one encoding.
    """
    record: dict[str, Any]
    try:
        record = {"key": key.decode("utf-8"), "value": value.decode("utf-8")}
    except UnicodeDecodeError:
        record = {"key": base64.b64encode(key).decode("ascii"),
                  "value": base64.b64encode(value).decode("ascii"), "encoding": "base64"}
    if ttl is not None:
        record["ttl"] = ttl
    return json.dumps(record, ensure_ascii=False)


def parse_record(line: bytes | str) -> tuple[bytes, bytes, int | None]:
    """``(key, value, ttl)`` from one JSON line; ``ValueError`` says what is wrong with it."""
    try:
        record = json.loads(line)
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError
        raise ValueError(f"not JSON: {e}") from None
    if not isinstance(record, dict):
        raise ValueError("not a JSON object")
    unknown = set(record) - _FIELDS
    if unknown:
        raise ValueError(f"unknown field {sorted(unknown)[0]!r} (allowed: key, value, ttl, encoding)")
    encoding = record.get("encoding", "utf-8")
    if encoding not in ("utf-8", "base64"):
        raise ValueError(f'"encoding" must be "utf-8" or "base64", not {encoding!r}')
    fields = []
    for name in ("key", "value"):
        text = record.get(name)
        if not isinstance(text, str):
            raise ValueError(f'"{name}" must be a string' if name in record else f'no "{name}"')
        if encoding == "base64":
            try:
                fields.append(base64.b64decode(text, validate=True))
            except binascii.Error:
                raise ValueError(f'"{name}" is not valid base64') from None
        else:
            try:
                fields.append(text.encode("utf-8"))
            except UnicodeEncodeError:  # a lone surrogate escaped as \udcxx in the JSON
                raise ValueError(f'"{name}" is not valid Unicode; use "encoding": "base64"') from None
    key, value = fields
    if not key:
        raise ValueError('"key" is empty')
    ttl = record.get("ttl")
    if ttl is not None:
        if isinstance(ttl, float) and ttl.is_integer():
            ttl = int(ttl)
        if isinstance(ttl, bool) or not isinstance(ttl, int) or not 1 <= ttl <= MAX_TTL:
            raise ValueError(f'"ttl" must be a whole number of seconds from 1 to {MAX_TTL}, or null')
    return key, value, ttl


# -- tables -----------------------------------------------------------------------------------

def format_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Columns padded to their widest cell, two spaces apart, no trailing blanks."""
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    return "\n".join(lines) + "\n"


# -- progress ---------------------------------------------------------------------------------

class Progress:
    """What ``dhm load`` shows on stderr while it works.

    On a terminal: one line redrawn in place (a bar when the input's size is
    known, else counts), at most every ``tty_interval`` seconds.  Elsewhere (a
    log file, CI): a plain line of counts every ``plain_interval`` seconds, so a
    log is not flooded with carriage returns.  ``clock`` is a parameter so tests
    can move time by hand.
    """

    def __init__(self, stream: IO[str], total_bytes: int | None = None, *, tty: bool | None = None,
                 clock: Callable[[], float] = time.monotonic, tty_interval: float = 0.1,
                 plain_interval: float = 5.0, width: int = 30) -> None:
        self.stream = stream
        self.total_bytes = total_bytes or None
        self.tty = stream.isatty() if tty is None else tty
        self.clock = clock
        self.interval = tty_interval if self.tty else plain_interval
        self.width = width
        self.started = clock()
        self._last = self.started
        self._drawn = False

    def update(self, done: int, failed: int, bytes_read: int, force: bool = False) -> None:
        now = self.clock()
        if not force and now - self._last < self.interval:
            return
        self._last = now
        elapsed = max(now - self.started, 1e-9)
        counts = f"{done} lines, {failed} failed, {done / elapsed:.0f}/s"
        if not self.tty:
            self.stream.write(f"dhm load: {counts}\n")
        elif self.total_bytes:
            fraction = min(bytes_read / self.total_bytes, 1.0)
            filled = int(fraction * self.width)
            bar = "#" * filled + "." * (self.width - filled)
            self.stream.write(f"\r[{bar}] {fraction:4.0%}  {counts}\x1b[K")
            self._drawn = True
        else:
            self.stream.write(f"\r{counts}\x1b[K")
            self._drawn = True
        self.stream.flush()

    def finish(self, done: int, failed: int, bytes_read: int) -> None:
        """The final state, and on a terminal the end of the redrawn line."""
        if self.tty:
            self.update(done, failed, bytes_read, force=True)
            if self._drawn:
                self.stream.write("\n")
                self.stream.flush()
