"""A tiny in-memory network for driving a few Swim cores in simulated time (tests only).

Packets arrive after ``latency``; streams complete after ``latency`` each way.
``cut(a, b)`` drops everything between two nodes, ``isolate``/``partition`` do it
in bulk, and ``stop`` silences a node (a crash: it neither sends nor answers).
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable

from twisted_dhm.membership.swim import Keyring, NodeInfo, OpenStream, SendPacket, Swim, SwimConfig


def addr_of(i: int) -> tuple[str, int]:
    return (f"10.0.0.{i}", 7946)


class Net:
    def __init__(self, latency: float = 0.002) -> None:
        self.now = 0.0
        self.latency = latency
        self.nodes: dict[tuple[str, int], Swim] = {}
        self.names: dict[tuple[str, int], str] = {}
        self.down: set[tuple[str, int]] = set()
        self.cuts: set[frozenset] = set()
        self.events: list = []
        self._seq = 0
        self.log: list[tuple[float, str, str, object]] = []  # (time, node, kind, detail) for determinism checks
        self.changes: list[tuple[float, str, str, str, int]] = []  # (time, observer, member, state, incarnation)
        self.drop: Callable[[tuple[str, int], tuple[str, int], bytes], bool] = lambda src, dst, data: False

    def add(
        self,
        i: int,
        config: SwimConfig | None = None,
        seed: int | None = None,
        keyring: Keyring | None = None,
        meta: bytes = b"",
    ) -> Swim:
        addr = addr_of(i)
        name = f"node{i}"
        rng = random.Random(seed if seed is not None else i)

        def on_change(new, old, name=name):
            self.changes.append((self.now, name, new.name, new.state, new.incarnation))

        swim = Swim(config or SwimConfig(), NodeInfo(name, addr, meta), rng, keyring=keyring, on_change=on_change)
        self.nodes[addr] = swim
        self.names[addr] = name
        return swim

    def start(self, i: int, seeds: list[int]) -> None:
        addr = addr_of(i)
        self.emit(addr, self.nodes[addr].start(self.now, [addr_of(s) for s in seeds]))

    # --- faults ---
    def cut(self, a: int, b: int) -> None:
        self.cuts.add(frozenset((addr_of(a), addr_of(b))))

    def heal(self) -> None:
        self.cuts.clear()

    def partition(self, side_a: list[int], side_b: list[int]) -> None:
        for a in side_a:
            for b in side_b:
                self.cut(a, b)

    def stop(self, i: int) -> None:
        self.down.add(addr_of(i))

    def reachable(self, src, dst) -> bool:
        return (
            dst in self.nodes
            and dst not in self.down
            and src not in self.down
            and (frozenset((src, dst)) not in self.cuts)
        )

    # --- plumbing ---
    def _push(self, when: float, item: tuple) -> None:
        self._seq += 1
        heapq.heappush(self.events, (when, self._seq, item))

    def emit(self, src, outputs) -> None:
        for out in outputs:
            self.log.append((self.now, self.names[src], type(out).__name__, (out.addr, out.data)))
            if isinstance(out, SendPacket):
                if self.reachable(src, out.addr) and not self.drop(src, out.addr, out.data):
                    self._push(self.now + self.latency, ("packet", src, out.addr, out.data))
            elif isinstance(out, OpenStream):
                self._push(self.now + self.latency, ("stream", src, out.addr, out.data))

    def _deliver(self, item: tuple) -> None:
        kind, src, dst, data = item
        if kind == "packet":
            if dst in self.down or dst not in self.nodes:
                return
            self.emit(dst, self.nodes[dst].receive_packet(self.now, src, data))
        elif kind == "stream":
            if not self.reachable(src, dst):
                self._push(self.now + self.latency, ("stream_failed", dst, src, b""))
                return
            reply, outs = self.nodes[dst].handle_stream(self.now, src, data)
            self.emit(dst, outs)
            if reply is None:
                self._push(self.now + self.latency, ("stream_failed", dst, src, b""))
            else:
                self._push(self.now + self.latency, ("stream_reply", dst, src, reply))
        elif kind == "stream_reply":
            if src in self.down or dst in self.down:
                return
            self.emit(dst, self.nodes[dst].stream_reply(self.now, src, data))
        elif kind == "stream_failed":
            if dst in self.down:
                return
            self.emit(dst, self.nodes[dst].stream_failed(self.now, src))

    def run_until(self, t: float) -> None:
        while True:
            best = None
            best_addr = None
            for addr, swim in self.nodes.items():
                if addr in self.down:
                    continue
                d = swim.next_deadline()
                if d is not None and (best is None or d < best):
                    best, best_addr = d, addr
            ev = self.events[0][0] if self.events else None
            if ev is not None and (best is None or ev <= best):
                if ev > t:
                    break
                when, _, item = heapq.heappop(self.events)
                self.now = max(self.now, when)
                self._deliver(item)
            elif best is not None:
                if best > t:
                    break
                self.now = max(self.now, best)
                self.emit(best_addr, self.nodes[best_addr].advance(self.now))
            else:
                break
        self.now = max(self.now, t)

    def view(self, i: int) -> dict[str, str]:
        return {m.name: m.state for m in self.nodes[addr_of(i)].members()}

    def node(self, i: int) -> Swim:
        return self.nodes[addr_of(i)]


def cluster(n: int, config: SwimConfig | None = None, settle: float = 10.0, **kw) -> Net:
    """``n`` nodes joined through node1, run for ``settle`` seconds."""
    net = Net()
    for i in range(1, n + 1):
        net.add(i, config=config, **kw)
    for i in range(1, n + 1):
        net.start(i, [1] if i != 1 else [])
    net.run_until(settle)
    return net
