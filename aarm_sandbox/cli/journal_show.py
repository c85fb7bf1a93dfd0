"""`aarm-sandbox journal show | tail | export`: reading a session's journal.

Reading is not verifying: these commands show what the file says, escaped so that nothing
the agent wrote can drive the reader's terminal, and they point at `journal verify` for
whether the file can be trusted. They never stop at a damaged line: a tampered or
truncated journal is exactly the one someone needs to read.
"""
from __future__ import annotations

import os
import sys
import threading
import time
from typing import Iterable, Protocol, TextIO

import orjson

from aarm_sandbox.journal.reader import Line, parse_lines, sidecar_intents
from aarm_sandbox.journal.render import (ALLOWED, DENIED, ERROR, HELD, QUIET, SESSION, TORN,
                                         WARNING, WOULD_DENY, WOULD_HOLD, Row, Summary, Timeline,
                                         escape, plain_line, summary_lines)

EXPORT_FORMATS = ("ocsf", "otlp-json")
READ_CHUNK_BYTES = 1 << 20

TONE_STYLES = {ALLOWED: "green", DENIED: "bold red", HELD: "yellow", WOULD_DENY: "red",
               WOULD_HOLD: "yellow", ERROR: "bold magenta", WARNING: "bold yellow",
               SESSION: "cyan", QUIET: "dim"}
ROW_STYLED_TONES = frozenset({DENIED, HELD, WOULD_DENY, WOULD_HOLD, ERROR, WARNING, QUIET})


def _complain(message: str) -> None:
    print(f"aarm-sandbox: {message}", file=sys.stderr)


def _read_journal(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        _complain(f"cannot read journal {escape(path)}: {e.strerror or e}")
        return None


# --------------------------------------------------------------------------------------
# output sinks: where rows go (terminal table, live terminal lines, plain text, JSON)

class Sink(Protocol):
    def line(self, line: Line, rows: list[Row]) -> None: ...
    def rows(self, rows: list[Row]) -> None: ...
    def flush(self) -> None: ...
    def close(self, summary: Summary) -> None: ...


def _console(out: TextIO, width: int | None = None):
    """The one Console of a command: markup, emoji and highlighting off, so that nothing
    but our own styles ever reaches the terminal."""
    from rich.console import Console
    return Console(file=out, force_terminal=True, markup=False, emoji=False, highlight=False,
                   width=width)


class _RowSink:
    """Sinks that show rows: a journal line is just the rows it produced."""
    only_denied = False

    def line(self, line: Line, rows: list[Row]) -> None:
        self.rows(rows)

    def kept(self, rows: list[Row]) -> list[Row]:
        return [row for row in rows if row.notable or not self.only_denied]


class PlainSink(_RowSink):
    """One line per record, no escape codes: for pipes, files and `grep`."""

    def __init__(self, out: TextIO, path: str, only_denied: bool):
        self.out, self.path, self.only_denied = out, path, only_denied

    def rows(self, rows: list[Row]) -> None:
        text = "".join(plain_line(row) + "\n" for row in self.kept(rows))
        if text:
            self.out.write(text)

    def flush(self) -> None:
        self.out.flush()

    def close(self, summary: Summary) -> None:
        self.out.write("".join(f"-- {text}\n" for text in summary_lines(summary, self.path)))
        self.out.flush()


class JsonSink:
    """Records exactly as stored (sorted keys), one per line; damaged lines are reported on
    stderr so that stdout stays machine-readable. With --denied, only the notable records
    (intents whose receipt never came last, as that is only known at the end)."""

    def __init__(self, out: TextIO, path: str, only_denied: bool):
        self.out, self.path, self.only_denied = out, path, only_denied

    def line(self, line: Line, rows: list[Row]) -> None:
        if self.only_denied:
            self.rows(rows)
        elif line.record is None or line.torn:
            self._damaged(line.lineno, TORN if line.torn else "unreadable line, not a journal record")
        else:
            self._write(line.record)

    def rows(self, rows: list[Row]) -> None:
        if not self.only_denied:
            return                       # every line was already written as it came
        for row in rows:
            if not row.notable:
                continue
            if row.record is None:
                self._damaged(row.lineno, row.why)
            else:
                self._write(row.record)

    def _damaged(self, lineno: int, what: str) -> None:
        _complain(f"{escape(self.path)}:{lineno}: {what}")

    def _write(self, record: dict) -> None:
        self.out.write(orjson.dumps(record, option=orjson.OPT_SORT_KEYS).decode() + "\n")

    def flush(self) -> None:
        self.out.flush()

    def close(self, summary: Summary) -> None:
        self.out.flush()


FIXED_COLUMNS = (("seq", 7), ("time", 15), ("decision", 20), ("action", 13))
FLEXIBLE_COLUMNS = (("target", 4), ("rule / reason", 3), ("process", 2))
MIN_FLEXIBLE_WIDTH = 12
GRID_BATCH_ROWS = 256


def fold(text: str, width: int) -> list[str]:
    """`text` in lines of at most `width` terminal cells, broken after the last space that
    fits (a longer word is split): the lines joined give back every character."""
    from rich.cells import cell_len, chop_cells
    if cell_len(text) <= width:
        return [text]
    lines = []
    while text:
        if cell_len(text) <= width:
            lines.append(text)
            break
        head = chop_cells(text, width)[0]
        space = head.rfind(" ")
        if space > 0:
            head = head[:space + 1]
        lines.append(head)
        text = text[len(head):]
    return lines


class _Styles:
    """ANSI codes for our own styles, rendered once by the Console for this terminal (so
    NO_COLOR and the colour depth are honoured), then reused for every row."""

    def __init__(self, console):
        self.console = console
        self._codes: dict[str, tuple[str, str]] = {}

    def _codes_for(self, style: str) -> tuple[str, str]:
        from rich.text import Text
        with self.console.capture() as capture:
            self.console.print(Text("X", style=style), end="")
        before, _, after = capture.get().partition("X")
        return before, after

    def wrap(self, text: str, style: str) -> str:
        if not style or not text:
            return text
        codes = self._codes.get(style)
        if codes is None:
            codes = self._codes[style] = self._codes_for(style)
        return codes[0] + text + codes[1]


def _styles(row: Row) -> tuple[str, str]:
    """(row style, decision style): whole rows in colour when they need a look."""
    tone_style = TONE_STYLES.get(row.tone, "")
    return (tone_style if row.tone in ROW_STYLED_TONES else ""), tone_style


class GridSink(_RowSink):
    """The terminal timeline: a table with fixed column widths whose cells fold, drawn row by
    row, so the same table serves `show` and `tail -f` and a 100k-record journal is not
    laid out by rich one cell at a time (rich picks widths, colours and NO_COLOR)."""

    def __init__(self, out: TextIO, path: str, only_denied: bool, width: int | None = None):
        self.console = _console(out, width)
        self.styles = _Styles(self.console)
        self.path, self.only_denied = path, only_denied
        self.widths = self._column_widths(self.console.width)
        self.buffer: list[str] = []
        self._start()

    @staticmethod
    def _column_widths(total: int) -> list[int]:
        fixed = [width for _, width in FIXED_COLUMNS]
        gaps = len(FIXED_COLUMNS) + len(FLEXIBLE_COLUMNS) - 1
        spare = max(total - sum(fixed) - gaps, MIN_FLEXIBLE_WIDTH * len(FLEXIBLE_COLUMNS))
        ratios = [ratio for _, ratio in FLEXIBLE_COLUMNS]
        flexible = [spare * ratio // sum(ratios) for ratio in ratios]
        flexible[0] += spare - sum(flexible)
        return fixed + flexible

    def _start(self) -> None:
        title = f"journal {escape(self.path)}"
        names = [name for name, _ in FIXED_COLUMNS + FLEXIBLE_COLUMNS]
        header = self._layout([(name, "bold") for name in names], "")
        rule = "\u2500" * min(sum(self.widths) + len(self.widths) - 1, self.console.width)
        self.buffer.extend([self.styles.wrap(title, "bold"), header, self.styles.wrap(rule, "dim")])

    def _layout(self, cells: list[tuple[str, str]], row_style: str) -> str:
        """One table row: every cell folded to its column, padded, styled."""
        from rich.cells import cell_len
        folded = [fold(text, width) for (text, _), width in zip(cells, self.widths)]
        height = max(len(lines) for lines in folded)
        out = []
        for i in range(height):
            parts = []
            for column, ((_, style), width, lines) in enumerate(zip(cells, self.widths, folded)):
                piece = lines[i] if i < len(lines) else ""
                pad = " " * (width - cell_len(piece))
                shown = self.styles.wrap(piece, style or row_style)
                parts.append(pad + shown if column == 0 else shown + pad)   # seq right-aligned
            out.append(" ".join(parts).rstrip())
        return "\n".join(out)

    def rows(self, rows: list[Row]) -> None:
        for row in self.kept(rows):
            row_style, decision_style = _styles(row)
            target = row.target + ("  " + row.detail if row.detail else "")
            self.buffer.append(self._layout(
                [(row.seq or "-", "" if row_style else "dim"), (row.time_of_day or "-", ""),
                 (row.decision, decision_style), (row.action, ""), (target, ""), (row.why, ""),
                 (row.who, "" if row_style else "dim")], row_style))
        if len(self.buffer) >= GRID_BATCH_ROWS:
            self.flush()

    def flush(self) -> None:
        if self.buffer:
            self.console.file.write("\n".join(self.buffer) + "\n")
            self.buffer.clear()
        self.console.file.flush()

    def close(self, summary: Summary) -> None:
        self.flush()
        _print_summary(self.console, summary, self.path)
        self.console.file.flush()


def _print_summary(console, summary: Summary, path: str) -> None:
    from rich.text import Text
    counts, seal, verify = summary_lines(summary, path)
    console.print(Text(counts))
    console.print(Text(seal, style="green" if summary.sealed else "bold red"))
    console.print(Text(verify, style="dim"))


def _sink(out: TextIO, tty: bool, as_json: bool, only_denied: bool, path: str,
          width: int | None = None) -> Sink:
    if as_json:
        return JsonSink(out, path, only_denied)
    if not tty:
        return PlainSink(out, path, only_denied)
    return GridSink(out, path, only_denied, width)


def _feed(timeline: Timeline, sink: Sink, lines: Iterable[Line]) -> None:
    for line in lines:
        sink.line(line, timeline.feed(line))


def _finish(timeline: Timeline, sink: Sink) -> None:
    sink.rows(timeline.finish())
    sink.close(timeline.summary)


# --------------------------------------------------------------------------------------
# show

def show(path: str, as_json: bool = False, only_denied: bool = False) -> int:
    return show_to(path, sys.stdout, sys.stdout.isatty(), as_json, only_denied)


def show_to(path: str, out: TextIO, tty: bool, as_json: bool = False, only_denied: bool = False,
            width: int | None = None) -> int:
    """`show` with its output and terminal-ness chosen by the caller (tests, pagers)."""
    data = _read_journal(path)
    if data is None:
        return 1
    timeline, sink = Timeline(), _sink(out, tty, as_json, only_denied, path, width)
    _feed(timeline, sink, _with_intents(path, parse_lines(data), data))
    _finish(timeline, sink)
    return 0


def _with_intents(path: str, lines, data: bytes | None = None):
    """The intent lines of the journal's intents file first (each was written before its
    action, so before its receipt), then the journal's own lines."""
    yield from _intents_of(path, data)
    yield from lines


def _intents_of(path: str, data: bytes | None) -> list[Line]:
    """The session's lines of its intents file (data: the journal's bytes, or its start)."""
    if data is None:
        try:
            with open(path, "rb") as f:
                data = f.readline()
        except OSError:
            data = b""
    first = next((x for x in data.split(b"\n") if x.strip()), b"")
    sid = None
    try:
        rec = orjson.loads(first) if first else None
        sid = rec.get("session_id") if isinstance(rec, dict) else None
    except orjson.JSONDecodeError:
        pass
    return sidecar_intents(path, first or None, sid)


# --------------------------------------------------------------------------------------
# tail

class _Follower:
    """Reads what has been appended since last time and hands out complete lines only; a
    line still being written waits in `partial` until its newline arrives."""

    def __init__(self, f):
        self.f = f
        self.partial = b""
        self.next_lineno = 1
        self.offset = 0

    def shrank(self) -> bool:
        return os.fstat(self.f.fileno()).st_size < self.offset

    def complete_lines(self) -> list[Line] | None:
        """The complete lines in the next chunk; None at the current end of the file."""
        chunk = self.f.read(READ_CHUNK_BYTES)
        if not chunk:
            return None
        self.offset += len(chunk)
        data = self.partial + chunk
        cut = data.rfind(b"\n") + 1
        complete, self.partial = data[:cut], data[cut:]
        lines = list(parse_lines(complete, self.next_lineno))
        self.next_lineno += complete.count(b"\n")
        return lines

    def torn_tail(self) -> list[Line]:
        """The unfinished last line, once we stop waiting for it."""
        return list(parse_lines(self.partial, self.next_lineno)) if self.partial else []


def tail(path: str, follow: bool = True, as_json: bool = False, only_denied: bool = False,
         poll: float = 0.2, stop: threading.Event | None = None) -> int:
    return tail_to(path, sys.stdout, sys.stdout.isatty(), follow, as_json, only_denied, poll, stop)


def tail_to(path: str, out: TextIO, tty: bool, follow: bool = True, as_json: bool = False,
            only_denied: bool = False, poll: float = 0.2, stop: threading.Event | None = None,
            width: int | None = None) -> int:
    """`tail` with its output and terminal-ness chosen by the caller."""
    try:
        f = open(path, "rb")
    except OSError as e:
        _complain(f"cannot read journal {escape(path)}: {e.strerror or e}")
        return 1
    timeline, sink = Timeline(), _sink(out, tty, as_json, only_denied, path, width)
    follower, status = _Follower(f), 0
    # (the intents written so far: their receipts, read next, settle them)
    _feed(timeline, sink, _intents_of(path, None))
    try:
        status = _follow(follower, timeline, sink, follow, poll, stop, path)
    except KeyboardInterrupt:
        pass
    finally:
        _feed(timeline, sink, follower.torn_tail())
        _finish(timeline, sink)
        f.close()
    return status


def _follow(follower: _Follower, timeline: Timeline, sink: Sink, follow: bool, poll: float,
            stop: threading.Event | None, path: str) -> int:
    """Print what is there, then keep printing what gets appended until told to stop.
    Data appended before `stop` is set is always read: the stop check follows a read."""
    while True:
        while (lines := follower.complete_lines()) is not None:
            _feed(timeline, sink, lines)
        sink.flush()
        if not follow or (stop is not None and stop.is_set()):
            return 0
        if follower.shrank():
            _complain(f"{escape(path)} shrank while being followed: a journal is append-only "
                      "(rewritten or truncated?); stopped")
            return 1
        if stop is not None:
            stop.wait(poll)
        else:
            time.sleep(poll)


# --------------------------------------------------------------------------------------
# export

def export(path: str, fmt: str, out=None) -> int:
    from aarm_sandbox.journal.export import write_ocsf, write_otlp_json
    out = sys.stdout if out is None else out
    if fmt not in EXPORT_FORMATS:
        _complain(f"unknown export format {escape(fmt)!r}; choose one of: {', '.join(EXPORT_FORMATS)}")
        return 2
    data = _read_journal(path)
    if data is None:
        return 1

    def warn(message: str) -> None:
        _complain(f"{escape(path)}: {message}")

    writer = write_ocsf if fmt == "ocsf" else write_otlp_json
    writer(_with_intents(path, parse_lines(data), data), out, os.path.basename(path), warn)
    out.flush()
    return 0
