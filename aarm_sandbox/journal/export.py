"""Journal records as OCSF 1.1 events and as one OTLP/JSON logs document.

Exports feed SIEMs and log pipelines that know nothing of receipts v1, so each record is
mapped onto the nearest standard event, and the original record always travels with it
(OCSF `unmapped`, OTLP attributes) so nothing a verifier or an investigator needs is lost.
Both writers stream: a 100k-record journal is never held in memory as events.
"""
from __future__ import annotations

import os
import shlex
from functools import lru_cache
from typing import Callable, Iterable, Iterator, TextIO

import orjson

from aarm_sandbox.journal.reader import Line
from aarm_sandbox.journal.render import (CHAINED_TYPES, HELD_RESULTS, TORN, UNRECORDED,
                                         PendingIntents, escape, intent_row, is_bytes_value,
                                         one_line, row_of, ts_to_ms, ts_to_ns)

PRODUCT = "aarm-sandbox"
OCSF_VERSION = "1.1.0"
Warn = Callable[[str], None]

# --------------------------------------------------------------------------------------
# shared helpers


def _dict(value) -> dict:
    return value if isinstance(value, dict) else {}


def _int(value) -> int | None:
    if isinstance(value, str) and value.isdigit():
        return int(value)                  # receipts carry 64-bit notif ids as strings
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _text(value) -> str | None:
    """A value as it should appear in an exported field: a real string as it is (JSON
    escapes what needs escaping), bytes that are not UTF-8 or odd values as escaped text."""
    if value is None:
        return None
    return value if isinstance(value, str) else escape(value)


def _prune(obj):
    """Drop None values and empty objects, so a missing fact is absent rather than null."""
    if isinstance(obj, dict):
        pruned = {k: _prune(v) for k, v in obj.items() if v is not None}
        return {k: v for k, v in pruned.items() if v != {}}
    return obj


@lru_cache(maxsize=1)
def _product_version() -> str | None:
    try:
        from importlib.metadata import version
        return version(PRODUCT)
    except Exception:  # noqa: BLE001 - running from a source tree: no version to report
        return None


def _session_of(rec: dict) -> str | None:
    return _text(rec.get("session_id"))


def _record_uid(rec: dict) -> str | None:
    if rec.get("receipt_id") is not None:
        return _text(rec["receipt_id"])
    session, seq = _session_of(rec), _int(rec.get("seq"))
    return f"{session}:{seq}" if session is not None and seq is not None else None


class _Records:
    """Walks a journal's lines for an exporter: chained records as they come, intent lines
    held until their receipt settles them, unreadable lines reported through `warn`, and
    the last good timestamp remembered (an orphan intent has none of its own)."""

    def __init__(self, lines: Iterable[Line], warn: Warn):
        self.lines, self.warn = lines, warn
        self.intents = PendingIntents()
        self.last_ts: str | None = None

    def __iter__(self) -> Iterator[tuple[Line, dict]]:
        for line in self.lines:
            rec = line.record
            if rec is None or line.torn:
                what = TORN if line.torn else "not a journal record"
                self.warn(f"line {line.lineno}: {what}, skipped")
                continue
            kind = rec.get("type")
            if kind == "intent":
                self.intents.add(line)
                continue
            if kind not in CHAINED_TYPES:
                self.warn(f"line {line.lineno}: unknown record type {escape(kind)}, skipped")
                continue
            if ts_to_ns(rec.get("ts")) is not None:
                self.last_ts = rec["ts"]
            if kind in ("receipt", "error"):
                self.intents.settle(rec)
            yield line, rec

    def orphan_intents(self) -> list[Line]:
        return self.intents.drain()


# --------------------------------------------------------------------------------------
# OCSF

_FILE_ACTIVITY = {   # File System Activity (1001) activity ids
    "file.create": (1, "Create"), "file.mkdir": (1, "Create"), "file.mknod": (1, "Create"),
    "file.symlink": (1, "Create"), "file.link": (1, "Create"), "file.read": (2, "Read"),
    "file.write": (3, "Update"), "file.truncate": (3, "Update"), "file.delete": (4, "Delete"),
    "file.rename": (5, "Rename"), "file.xattr": (6, "Set Attributes"),
    "file.utime": (6, "Set Attributes"), "file.chmod": (7, "Set Security"),
    "file.chown": (7, "Set Security"),
}
_NET_ACTIVITY = {"net.connect": (1, "Open"), "net.send": (6, "Traffic"), "net.bind": (99, "Bind")}
# OCSF file type_id where the action says what the object is (else 0, Unknown).
REGULAR_FILE = 1
_FILE_TYPE = {"file.mkdir": 2, "file.symlink": 7, "file.create": REGULAR_FILE,
              "file.write": REGULAR_FILE, "file.truncate": REGULAR_FILE, "process.exec": REGULAR_FILE}
_CLASSES = {  # class_uid -> (class_name, category_uid, category_name)
    0: ("Base Event", 0, "Uncategorized"),
    1001: ("File System Activity", 1, "System Activity"),
    1007: ("Process Activity", 1, "System Activity"),
    4001: ("Network Activity", 4, "Network Activity"),
    6002: ("Application Lifecycle", 6, "Application Activity"),
}
SEVERITY_INFORMATIONAL, SEVERITY_LOW, SEVERITY_MEDIUM, SEVERITY_HIGH = 1, 2, 3, 4
STATUS_UNKNOWN, STATUS_SUCCESS, STATUS_FAILURE = 0, 1, 2
ACTION_UNKNOWN, ACTION_ALLOWED, ACTION_DENIED = 0, 1, 2
DISPOSITION_UNKNOWN, DISPOSITION_ALLOWED, DISPOSITION_BLOCKED = 0, 1, 2
DISPOSITION_APPROVED, DISPOSITION_DETECTED, DISPOSITION_OTHER = 8, 15, 99
_DISPOSITION_NAMES = {0: "Unknown", 1: "Allowed", 2: "Blocked", 8: "Approved", 15: "Detected",
                      99: "Other"}


def _activity_for(action_type) -> tuple[int, int, str]:
    """(class_uid, activity_id, activity_name) for an action type."""
    if action_type in _FILE_ACTIVITY:
        return (1001, *_FILE_ACTIVITY[action_type])
    if action_type == "process.exec":
        return 1007, 1, "Launch"
    if action_type in _NET_ACTIVITY:
        return (4001, *_NET_ACTIVITY[action_type])
    return 0, 99, escape(action_type) or "Other"


def _ocsf_base(rec: dict, class_uid: int, activity_id: int, activity_name: str, *,
               time_ms: int | None, severity_id: int, message: str, log_name: str) -> dict:
    class_name, category_uid, category_name = _CLASSES[class_uid]
    return {
        "class_uid": class_uid, "class_name": class_name,
        "category_uid": category_uid, "category_name": category_name,
        "activity_id": activity_id, "activity_name": activity_name,
        "type_uid": class_uid * 100 + activity_id, "type_name": f"{class_name}: {activity_name}",
        "time": time_ms if time_ms is not None else 0,
        "severity_id": severity_id, "message": message,
        "metadata": {
            "product": {"name": PRODUCT, "vendor_name": PRODUCT, "version": _product_version()},
            "version": OCSF_VERSION, "uid": _record_uid(rec), "log_name": log_name,
            "sequence": _int(rec.get("seq")), "original_time": _text(rec.get("ts")),
            "correlation_uid": _session_of(rec),
        },
    }


def _file_object(path_value, type_id: int) -> dict:
    path = _text(path_value) or ""
    return {"path": path, "name": os.path.basename(path) or path, "type_id": type_id}


def _actor(rec: dict, action: dict) -> dict:
    identity = _dict(rec.get("identity"))
    exe = action.get("exe")
    process = {"pid": _int(action.get("pid")), "tid": _int(action.get("tid")),
               "file": _file_object(exe, REGULAR_FILE) if exe is not None else None}
    user = {"name": _text(identity.get("user")),
            "uid": None if identity.get("uid") is None else escape(identity.get("uid"))}
    return {"process": process, "user": user, "session": {"uid": _session_of(rec)},
            "app_name": _text(identity.get("agent"))}


def _endpoint(target: str) -> dict:
    """An OCSF network endpoint from the supervisor's target text ("1.2.3.4:80",
    "[::1]:53", "unix:/run/x.sock", "unix-abstract:@name")."""
    host, sep, port = target.rpartition(":")
    if sep and port.isdigit() and not target.startswith("unix"):
        return {"ip": host.strip("[]"), "port": int(port)}
    return {"name": target}


def _receipt_disposition(result, would, executed) -> tuple[int, int, str]:
    """(action_id, disposition_id, disposition caption) for a decision."""
    if result == "allow":
        if would is not None and would != "allow":
            return ACTION_ALLOWED, DISPOSITION_DETECTED, f"Detected (observe mode: would {escape(would)})"
        return ACTION_ALLOWED, DISPOSITION_ALLOWED, "Allowed"
    if result == "deny":
        return ACTION_DENIED, DISPOSITION_BLOCKED, "Blocked"
    if result in HELD_RESULTS:
        if executed:
            return ACTION_ALLOWED, DISPOSITION_APPROVED if result != "modify" else DISPOSITION_OTHER, \
                f"{escape(result)}: approved"
        return ACTION_DENIED, DISPOSITION_BLOCKED, f"{escape(result)}: held, not approved"
    return ACTION_UNKNOWN, DISPOSITION_OTHER, escape(result)


def _receipt_severity(result, would) -> int:
    if result == "allow":
        return SEVERITY_LOW if would is not None and would != "allow" else SEVERITY_INFORMATIONAL
    return SEVERITY_MEDIUM


def _action_objects(action_type, action: dict) -> dict:
    """The class-specific objects: the file touched, the program launched, the peer."""
    target = action.get("target")
    if action_type in _FILE_ACTIVITY:
        type_id = _FILE_TYPE.get(action_type, 0)
        objects = {"file": _file_object(target, type_id)}
        if "destination" in action:
            objects["file_result"] = _file_object(action["destination"], type_id)
        return objects
    if action_type == "process.exec":
        argv = action.get("argv")
        cmd_line = shlex.join(_text(a) or "" for a in argv) if isinstance(argv, list) else None
        return {"process": {"pid": _int(action.get("pid")), "cmd_line": cmd_line,
                            "file": _file_object(target, REGULAR_FILE)}}
    if action_type in _NET_ACTIVITY:
        objects = {"dst_endpoint": _endpoint(_text(target) or "")}
        if _int(action.get("bytes")) is not None:
            objects["traffic"] = {"bytes_out": action["bytes"]}
        return objects
    return {}


def ocsf_receipt(line: Line, rec: dict, log_name: str) -> dict:
    action, decision, outcome = _dict(rec.get("action")), _dict(rec.get("decision")), _dict(rec.get("outcome"))
    action_type = action.get("type")
    result, would, executed = decision.get("result"), decision.get("would"), outcome.get("executed") is True
    class_uid, activity_id, activity_name = _activity_for(action_type)
    event = _ocsf_base(rec, class_uid, activity_id, activity_name, time_ms=ts_to_ms(rec.get("ts")),
                       severity_id=_receipt_severity(result, would),
                       message=one_line(row_of(line)), log_name=log_name)
    action_id, disposition_id, disposition = _receipt_disposition(result, would, executed)
    ok = result == "allow" and executed
    event.update({
        "action_id": action_id, "action": {1: "Allowed", 2: "Denied"}.get(action_id, "Unknown"),
        "disposition_id": disposition_id, "disposition": disposition,
        "status_id": STATUS_SUCCESS if ok else STATUS_FAILURE, "status": "Success" if ok else "Failure",
        "status_code": _text(outcome.get("errno")),
        "status_detail": _text(decision.get("reason")),
        "actor": _actor(rec, action),
        **_action_objects(action_type, action),
    })
    return event


def _ocsf_lifecycle(line: Line, rec: dict, log_name: str) -> dict:
    kind = rec["type"]
    failed = kind == "session.error"
    event = _ocsf_base(rec, 6002, 3 if kind == "session.start" else 4,
                       "Start" if kind == "session.start" else "Stop",
                       time_ms=ts_to_ms(rec.get("ts")),
                       severity_id=SEVERITY_HIGH if failed else SEVERITY_INFORMATIONAL,
                       message=one_line(row_of(line)), log_name=log_name)
    event.update({
        "app": {"name": PRODUCT, "vendor_name": PRODUCT, "version": _product_version()},
        "status_id": STATUS_FAILURE if failed else STATUS_SUCCESS,
        "status": "Failure" if failed else "Success",
        "actor": {"user": {"name": _text(_dict(rec.get("identity")).get("user"))},
                  "session": {"uid": _session_of(rec)}},
    })
    return event


def _ocsf_error(line: Line, rec: dict, log_name: str) -> dict:
    """A notification refused before any decision: no action to classify, so a base event
    that says the syscall failed (the sandbox fails closed)."""
    event = _ocsf_base(rec, 0, 99, "Refused before decision", time_ms=ts_to_ms(rec.get("ts")),
                       severity_id=SEVERITY_MEDIUM, message=one_line(row_of(line)), log_name=log_name)
    event.update({"status_id": STATUS_FAILURE, "status": "Failure",
                  "status_code": _text(rec.get("errno")), "status_detail": _text(rec.get("reason"))})
    return event


def _ocsf_enforcement(line: Line, rec: dict, log_name: str) -> dict:
    """The supervisor killed a process after the fact (an exec loaded another file)."""
    event = _ocsf_base(rec, 1007, 2, "Terminate", time_ms=ts_to_ms(rec.get("ts")),
                       severity_id=SEVERITY_HIGH, message=one_line(row_of(line)), log_name=log_name)
    event.update({"action_id": ACTION_DENIED, "action": "Denied",
                  "disposition_id": DISPOSITION_BLOCKED, "disposition": "Blocked",
                  "status_id": STATUS_SUCCESS, "status": "Success",
                  "status_detail": _text(rec.get("reason")),
                  "actor": {"app_name": PRODUCT, "session": {"uid": _session_of(rec)}},
                  "process": {"pid": _int(rec.get("pid")), "tid": _int(rec.get("tid"))}})
    return event


def ocsf_orphan_intent(line: Line, fallback_ts: str | None, log_name: str) -> dict:
    """An intent whose receipt never came: the action may have happened unrecorded."""
    rec = line.record
    action_type = rec.get("action")
    class_uid, activity_id, activity_name = _activity_for(action_type)
    event = _ocsf_base(rec, class_uid, activity_id, activity_name, time_ms=ts_to_ms(fallback_ts),
                       severity_id=SEVERITY_MEDIUM, message=one_line(intent_row(line, rec)),
                       log_name=log_name)
    event["metadata"]["uid"] = f"{_session_of(rec)}:intent:{escape(rec.get('notif'))}"
    event["metadata"]["original_time"] = None
    event.update({"action_id": ACTION_UNKNOWN, "action": "Unknown",
                  "disposition_id": DISPOSITION_UNKNOWN, "disposition": UNRECORDED,
                  "status_id": STATUS_UNKNOWN, "status": "Unknown",
                  "actor": {"process": {"tid": _int(rec.get("tid"))}, "session": {"uid": _session_of(rec)}},
                  **_action_objects(action_type, {"target": rec.get("target")})})
    return event


_OCSF_BUILDERS = {"receipt": ocsf_receipt, "session.start": _ocsf_lifecycle,
                  "session.end": _ocsf_lifecycle, "session.error": _ocsf_lifecycle,
                  "error": _ocsf_error, "enforcement": _ocsf_enforcement}


def ocsf_events(lines: Iterable[Line], log_name: str, warn: Warn) -> Iterator[dict]:
    """One OCSF event per decision, refusal, enforcement and session boundary; checkpoints
    are integrity data for `journal verify`, not events, and are left out."""
    records = _Records(lines, warn)
    for line, rec in records:
        builder = _OCSF_BUILDERS.get(rec["type"])
        if builder is None:
            continue
        try:
            event = builder(line, rec, log_name)
        except Exception:  # noqa: BLE001 - tampered input must not stop the export
            warn(f"line {line.lineno}: malformed {escape(rec.get('type'))} record, exported unmapped")
            event = _ocsf_base(rec, 0, 99, "Malformed record", time_ms=ts_to_ms(rec.get("ts")),
                               severity_id=SEVERITY_MEDIUM, log_name=log_name,
                               message=f"malformed {escape(rec.get('type'))} record at line {line.lineno}")
        yield _with_original(event, rec)
    for line in records.orphan_intents():
        yield _with_original(ocsf_orphan_intent(line, records.last_ts, log_name), line.record)


def _with_original(event: dict, rec: dict) -> dict:
    """The event without its empty fields, and the record exactly as stored (nulls too)."""
    return {**_prune(event), "unmapped": rec}


def _json(value) -> str:
    """Compact sorted JSON with U+2028/U+2029 escaped: both are legal in JSON strings, but
    line-oriented readers (Python's splitlines, old JavaScript) take them for line breaks."""
    text = orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
    if "\u2028" in text or "\u2029" in text:
        text = text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
    return text


def write_ocsf(lines: Iterable[Line], out: TextIO, log_name: str, warn: Warn) -> None:
    batch: list[str] = []
    for event in ocsf_events(lines, log_name, warn):
        batch.append(_json(event))
        if len(batch) >= 512:
            out.write("\n".join(batch) + "\n")
            batch.clear()
    if batch:
        out.write("\n".join(batch) + "\n")


# --------------------------------------------------------------------------------------
# OTLP/JSON

SEVERITY_INFO, SEVERITY_WARN, SEVERITY_ERROR = (9, "INFO"), (13, "WARN"), (17, "ERROR")


def _attr(key: str, value) -> dict | None:
    """One OTLP KeyValue (int64 as a decimal string, as the OTLP JSON mapping requires)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return {"key": key, "value": {"boolValue": value}}
    if isinstance(value, int):
        if -2**63 <= value < 2**63:
            return {"key": key, "value": {"intValue": str(value)}}
        return {"key": key, "value": {"stringValue": str(value)}}
    if isinstance(value, list):
        return {"key": key, "value": {"arrayValue": {"values": [
            {"stringValue": _text(item) or ""} for item in value]}}}
    return {"key": key, "value": {"stringValue": _text(value)}}


def _attrs(pairs: list[tuple[str, object]]) -> list[dict]:
    return [a for a in (_attr(k, v) for k, v in pairs) if a is not None]


def _bytes_attr(key: str, value) -> tuple[str, object]:
    """The raw bytes of a non-UTF-8 value, next to its escaped text."""
    return (key + ".b64", value["b64"] if is_bytes_value(value) else None)


def _receipt_attributes(rec: dict) -> list[tuple[str, object]]:
    action, decision, outcome = _dict(rec.get("action")), _dict(rec.get("decision")), _dict(rec.get("outcome"))
    identity = _dict(rec.get("identity"))
    argv = action.get("argv")
    return [
        ("aarm.receipt_id", rec.get("receipt_id")),
        ("aarm.action.type", action.get("type")), ("aarm.action.target", action.get("target")),
        _bytes_attr("aarm.action.target", action.get("target")),
        ("aarm.action.destination", action.get("destination")),
        ("aarm.action.syscall", action.get("syscall")), ("aarm.action.notif", _int(action.get("notif"))),
        ("aarm.decision.result", decision.get("result")), ("aarm.decision.rule", decision.get("rule")),
        ("aarm.decision.reason", decision.get("reason")), ("aarm.decision.would", decision.get("would")),
        ("aarm.outcome.executed", outcome.get("executed") if isinstance(outcome.get("executed"), bool) else None),
        ("aarm.outcome.return", _int(outcome.get("return"))), ("aarm.outcome.errno", outcome.get("errno")),
        ("aarm.fast_path", rec.get("fast_path") if isinstance(rec.get("fast_path"), bool) else None),
        ("aarm.data_classes", rec.get("data_classes") if isinstance(rec.get("data_classes"), list) else None),
        ("aarm.context_hash", rec.get("context_hash")),
        ("process.pid", _int(action.get("pid"))), ("thread.id", _int(action.get("tid"))),
        ("process.executable.path", action.get("exe")), _bytes_attr("process.executable.path", action.get("exe")),
        ("process.command_args", argv if isinstance(argv, list) else None),
        ("user.name", identity.get("user")),
        ("user.id", None if identity.get("uid") is None else escape(identity.get("uid"))),
        ("aarm.agent.id", identity.get("agent")),
    ]


def _other_attributes(rec: dict) -> list[tuple[str, object]]:
    kind = rec.get("type")
    if kind == "error":
        return [("aarm.error.syscall", rec.get("syscall")), ("aarm.error.nr", _int(rec.get("nr"))),
                ("error.type", rec.get("errno")), ("aarm.error.reason", rec.get("reason")),
                ("thread.id", _int(rec.get("tid")))]
    if kind == "enforcement":
        return [("aarm.enforcement.reason", rec.get("reason")), ("thread.id", _int(rec.get("tid")))]
    if kind == "session.start":
        profile = _dict(rec.get("profile"))
        return [("aarm.command", rec.get("command") if isinstance(rec.get("command"), list) else None),
                ("aarm.intent", rec.get("intent")), ("aarm.workspace", rec.get("workspace")),
                ("aarm.profile.id", profile.get("id")), ("aarm.profile.version", profile.get("version")),
                ("aarm.profile.sha256", profile.get("sha256")), ("aarm.observe", rec.get("observe"))]
    if kind == "session.end":
        return [("aarm.exit_status", _int(rec.get("exit_status"))),
                ("aarm.seal.key_id", rec.get("key_id"))]
    return []


def _severity(rec: dict) -> tuple[int, str]:
    kind = rec.get("type")
    if kind in ("error", "enforcement", "session.error"):
        return SEVERITY_ERROR
    if kind == "receipt":
        decision = _dict(rec.get("decision"))
        plain_allow = decision.get("result") == "allow" and decision.get("would") in (None, "allow")
        return SEVERITY_INFO if plain_allow else SEVERITY_WARN
    return SEVERITY_INFO


def otlp_log_record(line: Line, rec: dict) -> dict:
    ns = ts_to_ns(rec.get("ts"))
    number, text = _severity(rec)
    pairs = [("aarm.record.type", rec.get("type")), ("aarm.seq", _int(rec.get("seq"))),
             ("aarm.record.hash", rec.get("hash")), ("aarm.journal.line", line.lineno)]
    pairs += _receipt_attributes(rec) if rec.get("type") == "receipt" else _other_attributes(rec)
    return _prune({"timeUnixNano": None if ns is None else str(ns),
                   "observedTimeUnixNano": None if ns is None else str(ns),
                   "severityNumber": number, "severityText": text,
                   "body": {"stringValue": one_line(row_of(line))}, "attributes": _attrs(pairs)})


def otlp_orphan_intent(line: Line, fallback_ts: str | None) -> dict:
    rec = line.record
    ns = ts_to_ns(fallback_ts)
    pairs = [("aarm.record.type", "intent"), ("aarm.action.type", rec.get("action")),
             ("aarm.action.target", rec.get("target")), _bytes_attr("aarm.action.target", rec.get("target")),
             ("aarm.action.syscall", rec.get("syscall")), ("aarm.action.notif", _int(rec.get("notif"))),
             ("thread.id", _int(rec.get("tid"))), ("aarm.journal.line", line.lineno),
             ("aarm.intent.unrecorded", True)]
    # No timestamp of its own: observed at the last record before the crash.
    return _prune({"observedTimeUnixNano": None if ns is None else str(ns),
                   "severityNumber": SEVERITY_WARN[0], "severityText": SEVERITY_WARN[1],
                   "body": {"stringValue": one_line(intent_row(line, rec))},
                   "attributes": _attrs(pairs)})


def _otlp_resource(first: dict | None, log_name: str) -> dict:
    first = first or {}
    return {"attributes": _attrs([
        ("service.name", PRODUCT), ("service.version", _product_version()),
        ("aarm.session.id", first.get("session_id")),
        ("host.name", first.get("host") if first.get("type") == "session.start" else None),
        ("os.type", "linux"), ("log.file.name", log_name),
    ])}


def _first_chained(lines: Iterator[Line]) -> tuple[list[Line], dict | None]:
    """Read ahead to the first chained record (normally line 1, session.start), which
    names the session and host for the resource; the lines read are replayed."""
    seen: list[Line] = []
    for line in lines:
        seen.append(line)
        rec = line.record
        if rec is not None and not line.torn and rec.get("type") in CHAINED_TYPES:
            return seen, rec
    return seen, None


def write_otlp_json(lines: Iterable[Line], out: TextIO, log_name: str, warn: Warn) -> None:
    """One ExportLogsServiceRequest, written piece by piece (log records are never all
    held in memory at once)."""
    iterator = iter(lines)
    head, first = _first_chained(iterator)
    resource = _json(_otlp_resource(first, log_name))
    scope = _json({"name": "aarm-sandbox.journal", "version": "1"})
    out.write(f'{{"resourceLogs":[{{"resource":{resource},"scopeLogs":[{{"scope":{scope},"logRecords":[')
    records = _Records(_chain(head, iterator), warn)
    separator = ""
    for line, rec in records:
        if rec["type"] == "checkpoint":
            continue
        try:
            log_record = otlp_log_record(line, rec)
        except Exception:  # noqa: BLE001 - tampered input must not stop the export
            warn(f"line {line.lineno}: malformed {escape(rec.get('type'))} record, skipped")
            continue
        out.write(separator + _json(log_record))
        separator = ","
    for line in records.orphan_intents():
        out.write(separator + _json(otlp_orphan_intent(line, records.last_ts)))
        separator = ","
    out.write("]}]}]}\n")


def _chain(head: list[Line], rest: Iterator[Line]) -> Iterator[Line]:
    yield from head
    yield from rest
