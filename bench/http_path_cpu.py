"""CPU cost of the REST hot path per request, in-process: no sockets, no other load.

Drives the real Site (same resource, coordinator and LMDB engine as the daemon) through
20 persistent HTTP/1.1 connections over StringTransports, one request on each and then one
group commit, as under load (a connection handles its requests one at a time).  Prints
microseconds of CPU per request on the reactor thread and in commits (which run on their
own thread in the daemon), and with --profile the top functions.  Throughput on real
sockets is bench/rest_vs_etcd.sh's job; this isolates the Python work, so a change to it
can be measured even on a busy machine.

    .venv/bin/python bench/http_path_cpu.py [--requests 20000] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import tempfile
import time

from twisted.internet.address import IPv4Address
from twisted.internet.defer import maybeDeferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from twisted_dhm.api.metrics import NodeMetrics
from twisted_dhm.api.rest import Limits, build_site
from twisted_dhm.storage.lmdb_engine import LMDBEngine
from twisted_dhm.testing.stack import single_node_coordinator


class GroupCommits:
    def __init__(self) -> None:
        self.calls: list = []

    def __call__(self, f, *args):  # type: ignore[no-untyped-def]
        from twisted.internet.defer import Deferred

        d: Deferred = Deferred()
        self.calls.append((f, args, d))
        return d

    seconds = 0.0  # CPU inside commits: on the commit thread in the daemon, not the reactor's

    def run_all(self, clock: Clock) -> None:
        clock.advance(0)  # the end of the reactor turn: queued writes go to the commit thread
        while self.calls:
            f, args, d = self.calls.pop(0)
            start = time.process_time()
            result = maybeDeferred(f, *args)
            self.seconds += time.process_time() - start
            result.chainDeferred(d)
            clock.advance(0)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()

    clock = Clock()
    clock.advance(1_800_000_000)
    commits = GroupCommits()
    with tempfile.TemporaryDirectory() as tmp:
        engine = LMDBEngine(tmp, clock, map_size=1 << 30, run_in_thread=commits)
        engine.open()
        coordinator = single_node_coordinator(engine, clock)
        site = build_site(coordinator, NodeMetrics(engine, process=False), clock, Limits(), 60, "n1", lambda: True)
        connections = []
        for i in range(20):
            protocol = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1000 + i))
            transport = StringTransport()
            protocol.makeConnection(transport)
            connections.append((protocol, transport))
        body = b"v" * 100
        puts = [b"PUT /v1/kv/bench%08d HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n%s" % (i % 100000, body)
                for i in range(args.requests)]
        gets = [b"GET /v1/kv/bench%08d HTTP/1.1\r\nHost: x\r\n\r\n" % (i % 100000) for i in range(args.requests)]

        def run(requests: list[bytes]) -> tuple[float, float]:
            commits.seconds = 0.0
            start = time.process_time()
            for i, request in enumerate(requests):
                protocol, transport = connections[i % 20]
                protocol.dataReceived(request)
                if i % 20 == 19:
                    commits.run_all(clock)
                    for _, transport in connections:
                        transport.clear()
            commits.run_all(clock)
            total = time.process_time() - start
            return (total - commits.seconds) / len(requests) * 1e6, commits.seconds / len(requests) * 1e6

        profiler = cProfile.Profile() if args.profile else None
        for name, requests in (("PUT", puts), ("GET", gets)):
            if profiler:
                profiler.enable()
            us, commit_us = run(requests)
            if profiler:
                profiler.disable()
                print(f"--- {name}")
                pstats.Stats(profiler).sort_stats("tottime").print_stats(18)
                profiler = cProfile.Profile()
            print(f"{name}: {us:.1f} us reactor-thread CPU per request ({1e6 / us:,.0f} req/s on one core), "
                  f"+{commit_us:.1f} us in the commit thread")
        engine.close()
        commits.run_all(clock)


if __name__ == "__main__":
    main()
