#!/usr/bin/env python3
"""Rebalancing and repair, measured on real processes (docs/rebalancing.md, docs/benchmarks.md).

    .venv/bin/python bench/rebalance.py [--keys 100000] [--value-size 1024] [--rate 300]

1. Starts three nodes on 127.0.0.1 (LMDB, N=3, Q=1024, default --handoff-rate) and loads
   ``--keys`` keys of ``--value-size`` bytes.
2. Runs a steady client load (``--rate`` requests/s, open loop, 90 % GET / 10 % PUT on the
   loaded keys) for ``--quiet`` seconds: the quiet latency.
3. Starts two more nodes while the load goes on and waits until every node reports no
   partition pulling, no transfer running or queued, and nothing moved for three polls:
   the time to rebalance (from the moment node 1 lists a new member: the new processes'
   start-up, Python imports on the same two cores, comes before; ``during_with_start_up``
   counts it too), the bytes moved (each copy counted once, by the node that sent a
   push or received a pull) against the minimum (the records whose partitions gained an
   owner), and the latency during the move.
4. Checks every key is on exactly its three owners' disks (LMDB read directly).
5. Anti-entropy: the duration of a round when the replicas agree; then deletes 1 % of the
   keys from one node's disk while it is stopped and restarts it: the time and bytes to
   repair it (the restarted node compares its trees with the others' and pulls what differs).

Every loop is bounded by its count and a deadline.  Writes JSON to
bench/results/rebalance-<time>.json and prints a summary.  Needs two quiet cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import lmdb

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from twisted_dhm.ring import partition_of  # noqa: E402
from twisted_dhm.testing.process import NodeProcess, wait_for  # noqa: E402

FLAGS = ("--health-interval", "0.5", "--health-threshold", "3", "--anti-entropy-interval", "10",
         "--request-timeout", "2")


def key_of(i: int) -> bytes:
    return b"rb%08d" % i


async def http(reader, writer, method: bytes, path: bytes, body: bytes = b"") -> int:
    writer.write(b"%s %s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (method, path, len(body), body))
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    if length:
        await reader.readexactly(length)
    return status


async def load(ports: list[int], keys: int, value: bytes, conns: int = 32) -> None:
    counter = iter(range(keys))
    failures = []

    async def worker(port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for i in counter:
            status = await http(reader, writer, b"PUT", b"/v1/kv/" + key_of(i), value)
            if status not in (200, 201, 204):
                failures.append((i, status))
        writer.close()

    await asyncio.gather(*(worker(ports[c % len(ports)]) for c in range(conns)))
    if failures:
        raise SystemExit(f"{len(failures)} loads failed, first {failures[:3]}")


class Traffic:
    """Open-loop client load: ``rate`` requests/s, each on its own connection from a pool."""

    def __init__(self, ports: list[int], keys: int, value: bytes, rate: float) -> None:
        self.ports, self.keys, self.value, self.rate = ports, keys, value, rate
        self.samples: list[tuple[float, float, int, bool, int, int]] = []  # (start, latency, status, write, port, key)
        self.stop = False

    async def run(self, deadline: float) -> None:
        pool: asyncio.Queue = asyncio.Queue()
        for c in range(64):
            pool.put_nowait(await asyncio.open_connection("127.0.0.1", self.ports[c % len(self.ports)]))
        rng = random.Random(7)
        tasks = set()
        start = time.monotonic()
        n = 0
        while not self.stop and time.monotonic() < deadline:
            n += 1
            due = start + n / self.rate
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.ensure_future(self.one(pool, rng.randrange(self.keys), rng.random() < 0.1))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        await asyncio.gather(*tasks, return_exceptions=True)

    async def one(self, pool: asyncio.Queue, i: int, write: bool) -> None:
        reader, writer = await pool.get()
        began = time.monotonic()
        try:
            if write:
                status = await http(reader, writer, b"PUT", b"/v1/kv/" + key_of(i), self.value)
            else:
                status = await http(reader, writer, b"GET", b"/v1/kv/" + key_of(i))
        except (OSError, asyncio.IncompleteReadError):
            status = 0
        self.samples.append((began, time.monotonic() - began, status, write, writer.get_extra_info("peername")[1], i))
        pool.put_nowait((reader, writer))

    def window(self, t0: float, t1: float, kind: bool | None = None) -> dict:
        """Latencies of the requests started in [t0, t1): all, or only writes (kind True) or reads."""
        chosen = [s for s in self.samples if t0 <= s[0] < t1 and (kind is None or s[3] == kind)]
        lat = sorted(s[1] for s in chosen)
        errors = sum(1 for s in chosen if s[2] not in (200, 201, 204))
        if not lat:
            return {"requests": 0}
        pick = lambda q: round(lat[min(len(lat) - 1, int(q * len(lat)))] * 1000, 2)  # noqa: E731
        found = {"requests": len(lat), "errors": errors, "p50_ms": pick(0.5), "p99_ms": pick(0.99),
                 "max_ms": round(lat[-1] * 1000, 2)}
        if kind is None:
            found["get"] = self.window(t0, t1, False)
            found["put"] = self.window(t0, t1, True)
        return found


def statuses(node: NodeProcess) -> list[dict]:
    return json.loads(node.request("GET", "/v1/cluster/status", timeout=10)[2])["nodes"]


def moved_bytes(nodes: list[dict]) -> int:
    return sum(n["moved"]["bytes_sent"] + n["moved"]["bytes_received"] for n in nodes if "moved" in n)


def ring(node: NodeProcess) -> dict[int, set[str]]:
    table = json.loads(node.request("GET", "/v1/cluster/ring")[2])["table"]
    return {row["partition"]: set(row["owners"]) for row in table}


def disk_keys(node: NodeProcess) -> dict[bytes, int]:
    env = lmdb.open(str(node.data_dir), readonly=True, lock=True, max_dbs=8, create=False)
    try:
        db = env.open_db(b"records", create=False)
        with env.begin(db=db) as txn:
            return {bytes(k): len(v) for k, v in txn.cursor()}
    finally:
        env.close()


def wait_settled(first: NodeProcess, deadline: float) -> tuple[float, list[dict]]:
    quiet_polls, last = 0, None
    while time.monotonic() < deadline:
        try:
            nodes = statuses(first)
        except OSError:
            time.sleep(1)
            continue
        busy = any(n.get("partitions_pulling") or n.get("partitions_to_hand_off") or n.get("transfers")
                   or n.get("transfers_queued") for n in nodes)
        total = moved_bytes(nodes)
        quiet_polls = quiet_polls + 1 if not busy and total == last else 0
        last = total
        if quiet_polls >= 3:
            return time.monotonic(), nodes
        time.sleep(1)
    raise SystemExit("the cluster did not settle before the deadline")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--value-size", type=int, default=1024)
    parser.add_argument("--rate", type=float, default=300.0, help="client requests per second during the test")
    parser.add_argument("--quiet", type=float, default=20.0, help="seconds of quiet latency measurement")
    parser.add_argument("--deadline", type=float, default=900.0, help="give up after this many seconds")
    parser.add_argument("--handoff-rate", default=None, help="the nodes' --handoff-rate (default: theirs)")
    parser.add_argument("--keep", action="store_true", help="keep the nodes' data and logs (about 1 GB) for a look")
    args = parser.parse_args()
    value = os.urandom(args.value_size // 2).hex().encode()[: args.value_size]
    end = time.monotonic() + args.deadline
    work = Path(tempfile.mkdtemp(prefix="dhm-rebalance-"))
    nodes: dict[str, NodeProcess] = {}
    result: dict = {"keys": args.keys, "value_size": args.value_size, "rate": args.rate,
                    "handoff_rate": args.handoff_rate or "default"}

    def start(names: list[str], watch: NodeProcess | None = None) -> float | None:
        """Start the nodes at once; with ``watch``, the time it first lists one of them."""
        new = [NodeProcess(work / n / "data", node_id=n, log_path=work / f"{n}.log") for n in names]
        everyone = list(nodes.values()) + new
        seeds = ",".join(f"127.0.0.1:{n.peer_port}" for n in everyone)
        for node in new:
            node.extra_args = ("--seed-nodes", seeds, *FLAGS,
                               *(("--handoff-rate", args.handoff_rate) if args.handoff_rate else ()))
            nodes[node.node_id] = node
            node.start(wait=False)
        seen = None
        while watch is not None and seen is None and time.monotonic() < end:
            try:
                listed = set(watch.member_states())
            except OSError:
                listed = set()
            if set(names) & listed:
                seen = time.monotonic()
            else:
                time.sleep(0.05)
        for node in new:
            node.wait_ready()
        return seen

    try:
        start(["n1", "n2", "n3"])
        assert wait_for(lambda: len([s for s in nodes["n1"].member_states().values() if s == "alive"]) == 3)
        t = time.monotonic()
        asyncio.run(load([n.port for n in nodes.values()], args.keys, value))
        result["load_seconds"] = round(time.monotonic() - t, 1)
        print(f"loaded {args.keys} keys in {result['load_seconds']} s", flush=True)
        before = ring(nodes["n1"])
        wait_settled(nodes["n1"], end)

        traffic = Traffic([n.port for n in nodes.values()], args.keys, value, args.rate)

        async def scenario() -> tuple[float, float, float, list[dict]]:
            runner = asyncio.ensure_future(traffic.run(end))
            await asyncio.sleep(args.quiet)
            launched = time.monotonic()
            joined = await asyncio.to_thread(start, ["n4", "n5"], nodes["n1"])
            if joined is None:
                raise SystemExit("the new nodes never joined before the deadline")
            settled, after_nodes = await asyncio.to_thread(wait_settled, nodes["n1"], end)
            await asyncio.sleep(5)
            traffic.stop = True
            await runner
            return launched - args.quiet, launched, joined, settled, after_nodes

        quiet_from, launched, joined, settled, after_nodes = asyncio.run(scenario())
        after = ring(nodes["n1"])
        sizes = disk_keys(nodes["n1"])
        record_size = sum(sizes.values()) / max(len(sizes), 1) + len(key_of(0))
        gained = sum(len(after[partition_of(key_of(i))] - before[partition_of(key_of(i))]) for i in range(args.keys))
        minimum = gained * record_size
        moved = moved_bytes(after_nodes)
        result["rebalance"] = {
            "seconds": round(settled - joined, 1),
            "bytes_moved": moved, "bytes_minimum": int(minimum), "moved_over_minimum": round(moved / minimum, 3),
            "replicas_moved_share": round(gained / (3 * args.keys), 3),
            "seconds_to_join": round(joined - launched, 2),
            # from the moment the cluster knows a new member (n1 lists it) to the end of the moves;
            # the new processes' start-up (Python imports on the same two cores) comes before it
            "quiet": traffic.window(quiet_from, launched), "during": traffic.window(joined, settled),
            "during_with_start_up": traffic.window(launched, settled),
            "per_node": {n["node"]: n.get("moved") for n in after_nodes},
        }
        print(json.dumps(result["rebalance"], indent=1), flush=True)
        # Every request, for a closer look at where the slow ones fall (seconds from the join).
        result["samples"] = [[round(began - joined, 4), round(latency * 1000, 3), status, int(write), port, i]
                             for began, latency, status, write, port, i in traffic.samples]

        disks = {name: disk_keys(node) for name, node in nodes.items()}
        misplaced = 0
        for i in range(args.keys):
            key = key_of(i)
            holders = {name for name, keys in disks.items() if key in keys}
            misplaced += holders != after[partition_of(key)]
        result["misplaced_keys"] = misplaced
        print(f"keys not on exactly their owners: {misplaced}", flush=True)

        # Anti-entropy when every replica agrees: wait for a round on every node.
        time.sleep(12)
        rounds = {n["node"]: n["anti_entropy"]["last_round"] for n in statuses(nodes["n1"])}
        result["anti_entropy_agreeing"] = rounds
        print("anti-entropy rounds, replicas agreeing:", json.dumps(rounds), flush=True)

        # 1 % of the keys lost on one disk, repaired when the node is back.
        victim = nodes["n3"]
        victim.stop()
        owned_by_victim = [key_of(i) for i in range(args.keys) if "n3" in after[partition_of(key_of(i))]]
        lost = random.Random(3).sample(owned_by_victim, max(1, args.keys // 100))
        env = lmdb.open(str(victim.data_dir), max_dbs=8, map_size=16 << 30)
        db = env.open_db(b"records")
        with env.begin(write=True, db=db) as txn:
            for key in lost:
                txn.delete(key)
        env.close()
        # The restarted node's counters start from zero: count the others' before, everyone's after.
        moved_before = moved_bytes([n for n in statuses(nodes["n1"]) if n["node"] != "n3"])
        t = time.monotonic()
        victim.start()
        def repaired() -> bool:
            on_disk = disk_keys(victim)
            return all(k in on_disk for k in lost)

        assert wait_for(repaired, deadline=max(5, end - time.monotonic()), step=0.5)
        repaired = time.monotonic() - t
        _, nodes_after = wait_settled(nodes["n1"], end)
        result["repair_one_percent"] = {"keys_lost": len(lost), "seconds_from_restart": round(repaired, 2),
                                        "bytes_moved": moved_bytes(nodes_after) - moved_before}
        print("1 % repair:", json.dumps(result["repair_one_percent"]), flush=True)
    finally:
        for node in nodes.values():
            node.kill()
        if args.keep:
            print(f"kept the nodes' data and logs in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    out = ROOT / "bench" / "results" / f"rebalance-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(exist_ok=True)
    samples = result.pop("samples", None)
    out.write_text(json.dumps(result, indent=1) + "\n")
    if samples is not None:
        out.with_suffix(".samples.json").write_text(json.dumps(samples) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
