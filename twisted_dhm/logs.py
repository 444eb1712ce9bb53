"""Log output for the daemon: JSON lines for machines (``--log-format json``).

twistd asks for its log observer by dotted name with no arguments, so the
node id the observer stamps on every line is set once here at start-up.  Only
formatting reads it; no logic does.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    formatEvent,
    globalLogPublisher,
)
from zope.interface import implementer

_node_id = ""
# Every level passes until the daemon sets its --log-level (tests and the simulator see all).
_levels = LogLevelFilterPredicate(defaultLogLevel=LogLevel.debug)
_filtered = FilteringLogObserver(globalLogPublisher, [_levels])


def configure(node_id: str) -> None:
    global _node_id
    _node_id = node_id


def logger(namespace: str) -> Logger:
    """The Logger of one of our subsystems: its events below ``--log-level`` are dropped here,
    before any observer formats them (twistd itself has no level filter)."""
    return Logger(namespace=namespace, observer=_filtered)


def set_level(name: str) -> None:
    """The least severe level written by our subsystems (process-wide: the daemon calls it)."""
    _levels.setLogLevelForNamespace("", LogLevel.levelWithName(name))


def event_as_json_line(event: dict[str, Any], node_id: str) -> str:
    level = event.get("log_level", LogLevel.info)
    record: dict[str, Any] = {
        "time": datetime.fromtimestamp(event.get("log_time", 0), UTC).isoformat(
            timespec="milliseconds"
        ),
        "level": getattr(level, "name", str(level)),
        "node": node_id,
        "subsystem": event.get("log_namespace", ""),
        "message": formatEvent(event),
    }
    if event.get("request_id") is not None:
        record["request_id"] = event["request_id"]
    failure = event.get("log_failure")
    if failure is not None:
        record["error"] = failure.getTraceback()
    return json.dumps(record, default=repr) + "\n"


@implementer(ILogObserver)
class JSONLinesObserver:
    def __init__(self, out: TextIO, node_id: str) -> None:
        self._out = out
        self._node_id = node_id

    def __call__(self, event: dict[str, Any]) -> None:
        self._out.write(event_as_json_line(event, self._node_id))
        self._out.flush()


def json_observer() -> JSONLinesObserver:
    """Observer factory for twistd's ``--logger``."""
    return JSONLinesObserver(sys.stdout, _node_id)
