"""What a node is doing, as plain data: for the dashboard's JSON (``/v1/node/stats``) and the manhole.

Everything here only reads the node, and answers from what it already counts.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import attrs

#: Most hints counted per target node; beyond it the count says "at least this many".
HINT_COUNT_LIMIT = 10_000


def transfers_of(node: Any) -> list[Any]:
    """Partition transfers in flight, from the node's rebalancing service if it has one.

    Duck-typed, so this module does not depend on that service: the first of ``node.rebalance``,
    ``node.rebalancer`` or ``node.transfers`` that exists, asked in turn for ``status()["transfers"]``,
    then ``transfers`` or ``in_flight`` (a method, a dict of transfers or a list), then iterated.
    Empty while the node has no such service.
    """
    for name in ("rebalance", "rebalancer", "transfers"):
        source = getattr(node, name, None)
        if source is None:
            continue
        status = getattr(source, "status", None)
        if callable(status):
            answer = status()
            if isinstance(answer, dict) and "transfers" in answer:
                return list(answer["transfers"])
        for attribute in ("transfers", "in_flight"):
            value = getattr(source, attribute, None)
            if callable(value):
                value = value()
            if isinstance(value, dict):
                return list(value.values())
            if isinstance(value, Iterable) and not isinstance(value, str | bytes):
                return list(value)
        if isinstance(source, Iterable) and not isinstance(source, str | bytes):
            return list(source)
    return []


def jsonable(value: Any) -> Any:
    """Plain JSON types from what a subsystem hands back (attrs classes, tuples, bytes, sets)."""
    if attrs.has(type(value)):
        return jsonable(attrs.asdict(value, recurse=False))
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(v) for v in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return repr(value)


def hints_summary(node: Any, limit: int = HINT_COUNT_LIMIT) -> dict[str, Any]:
    """Hinted writes held here, by the node each is for (counted up to ``limit``), and delivered so far."""
    from twisted_dhm.cluster.replica import HINT_SEPARATOR

    handoff = node.handoff
    store = handoff.replica.hints
    by_target = {t: len(store.scan(t.encode() + HINT_SEPARATOR, None, limit)) for t in handoff.targets()}
    return {"queued": handoff.queued(), "by_target": by_target, "delivered": handoff.delivered}


def request_stats(metrics: Any) -> dict[str, dict[str, Any]]:
    """Per operation: answers by status code, and the latency histogram (cumulative buckets)."""
    out: dict[str, dict[str, Any]] = {}

    def op(name: str) -> dict[str, Any]:
        return out.setdefault(name, {"count": 0, "by_code": {}, "sum_seconds": 0.0, "buckets": []})

    for family in metrics.requests.collect():
        for sample in family.samples:
            if sample.name.endswith("_total"):
                entry = op(sample.labels["op"])
                entry["by_code"][sample.labels["code"]] = int(sample.value)
    for family in metrics.latency.collect():
        for sample in family.samples:
            entry = op(sample.labels["op"])
            if sample.name.endswith("_bucket"):
                entry["buckets"].append([sample.labels["le"], int(sample.value)])
            elif sample.name.endswith("_sum"):
                entry["sum_seconds"] = sample.value
            elif sample.name.endswith("_count"):
                entry["count"] = int(sample.value)
    return out


def node_stats(node: Any, clock: Any) -> dict[str, Any]:
    """One node's numbers for the dashboard: requests, storage, hints, transfers, repairs."""
    storage = node.engine.stats()
    return {
        "node": node.config.node_id,
        "time": clock.seconds(),
        "requests": request_stats(node.metrics),
        "storage": {"keys": storage.keys, "bytes": storage.bytes},
        "partitions_owned": len(node.routing.table.owned_by(node.view.local_id)),
        "hints": hints_summary(node),
        "transfers": jsonable(transfers_of(node)),
        "read_repairs": node.coordinator.read_repairs,
        "tombstones_reclaimed": node.reaper.reclaimed,
    }
