"""A whole SWIM cluster in one process, on simulated time, with seeded faults.

``SwimSimulation`` drives N real ``Swim`` cores (``twisted_dhm.membership.swim``)
through their pure API: the same state machine the daemon runs, with the
daemon's sockets and reactor replaced by an in-memory network and a
``HeapClock`` (``twisted_dhm.testing.heapclock``: ``task.Clock``'s interface on
a heap, because ``task.Clock`` re-sorts every pending call on every
``callLater``, which is quadratic at a thousand nodes).  Same seed, same run:
every random choice (loss, delay, duplication, join seeds and each core's own
``rng``) comes from generators derived from ``seed``, and no set or dict is
iterated in an order that depends on string hashing.

The model
---------
* **Datagrams** (``SendPacket``): each is lost with probability ``loss``
  (independently), else delivered after ``delay[0] + U(0, delay[1])`` seconds,
  so jitter reorders packets; with probability ``duplicate`` a second copy with
  its own delay is delivered too.  A datagram to an address with no node, to a
  crashed node, or across a partition (checked when it is sent and again when
  it arrives) is dropped.
* **Streams** (``OpenStream``): TCP is reliable, so no loss; the request reaches
  the server after three one-way delays (handshake, then data), the server's
  ``handle_stream`` runs there, and its reply comes back after one more delay
  and is passed to ``stream_reply``.  If the server is unreachable (crashed,
  partitioned, no such address) or answers too late, the client's
  ``stream_failed`` fires ``config.tcp_timeout`` after the open, as the
  daemon's adapter does; a server that closes without a reply (``None``) is
  reported as failed after one delay.  A late reply after the timeout is
  discarded (the connection is gone).
* **Crash**: the node stops at once: its timers and in-flight streams die,
  datagrams to it are dropped, streams to it time out (a host that is down, not
  a refused port).  **Restart** builds a new ``Swim`` with the same name and
  address and fresh state and joins through seeds.  **Leave** calls
  ``Swim.leave``, sends what it returns, optionally keeps running for
  ``linger`` seconds, then stops the node.
* **Partition**: ``partition(groups)`` puts each listed set of nodes in its own
  island; every node not listed is in one more island; nodes reach each other
  only within an island.  ``heal()`` joins them again.
* **Stall** (a process that is alive but not scheduled: a long GC pause, CPU
  starvation, a VM steal): for the stall's length the node runs nothing and
  sends nothing.  Datagrams to it wait in its socket buffer, of which the first
  ``stall_buffer`` (default 200, about what Linux's default 208 KiB receive
  buffer holds of small datagrams) are kept and the rest dropped; stream data
  waits in the kernel without limit.  Its due timers wait.  On resume, at one
  instant: with ``stall_order="timers-first"`` (default) the core's overdue
  timers fire first (``advance``), then stream time-outs that fell due, then
  the queued packets and stream events in arrival order: that is the order
  Twisted's reactor gives when the stall happened inside a callback (the next
  loop iteration runs ``runUntilCurrent`` before polling sockets), and the
  order in which an overdue probe timeout beats the ack that was waiting in
  the buffer, which is what makes a slow member suspect healthy ones (the
  Lifeguard paper's scenario).  ``stall_order="io-first"`` processes the
  buffer first, as when the process stalled while blocked in ``epoll``.
* **Slow** (``slow(name, delay)``: a process that keeps running but is starved
  of CPU, Lifeguard's "slow message processing"): every event of the node (a
  datagram reaching its core, a stream request, reply or time-out, and its own
  due timers) is handled after an extra delay drawn independently for that event
  from U(delay), so events can be handled out of order (as in memberlist, whose
  packet handler and probe timers are separate goroutines, each waiting to be
  scheduled).  What the core sends goes out when it handles the event.
  Datagrams waiting to be handled count against the same ``stall_buffer``;
  beyond it they are dropped.  Overdue timers run together at the real time of
  the delayed wake-up, as after a stall.  ``timers=False`` delays only what
  arrives and lets the node's timers fire on time.
* **Time** the cores see is the clock's time at each event; processing itself
  takes no simulated time.

Each core's ``on_change`` is recorded (when ``recording`` is on) as an
``Event(time, observer, subject, state, incarnation)`` in ``events``; the
metric helpers at the bottom read that log.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple

from twisted_dhm.membership.swim.config import SwimConfig
from twisted_dhm.membership.swim.core import MemberView, NodeInfo, OpenStream, SendPacket, Swim
from twisted_dhm.testing.heapclock import HeapClock

Address = tuple[str, int]
SWIM_PORT = 7946
LIVE_STATES = ("alive", "suspect")
UP, CRASHED, STOPPED = "up", "crashed", "stopped"


class Event(NamedTuple):
    time: float
    observer: str
    subject: str
    state: str
    incarnation: int


def node_name(i: int) -> str:
    return f"n{i:04d}"


def node_addr(i: int) -> Address:
    return (f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", SWIM_PORT)


class SimNode:
    """One member's process: its core and what the simulated kernel holds for it."""

    __slots__ = ("name", "addr", "index", "core", "rng", "epoch", "status", "stalled", "stall_token",
                 "io_backlog", "timer_backlog", "buffered", "wake_at", "island", "live", "started_at", "stopped_at",
                 "meta", "slow", "slow_until", "slow_timers", "slow_rng", "slow_pending", "late_wake")

    def __init__(self, name: str, addr: Address, index: int, meta: bytes = b"") -> None:
        self.name = name
        self.addr = addr
        self.index = index
        self.meta = meta
        self.core: Swim | None = None
        self.rng: random.Random | None = None
        self.epoch = 0  # bumped on crash/restart/stop: invalidates timers and streams of the old process
        self.status = STOPPED
        self.stalled = False
        self.stall_token = 0
        self.io_backlog: deque = deque()
        self.timer_backlog: deque = deque()
        self.buffered = 0  # datagrams in io_backlog
        self.wake_at = math.inf
        self.island = 0
        self.live = 0  # members other than itself it sees alive or suspect
        self.started_at = math.inf  # when the current process started
        self.stopped_at: float | None = None  # when it crashed or stopped; None while running
        self.slow: tuple[float, float] | None = None  # per-event handling delay range while slow
        self.slow_until = math.inf
        self.slow_timers = True  # its own timers are late too
        self.slow_rng: random.Random | None = None
        self.slow_pending = 0  # datagrams delivered but not yet handled (slow)
        self.late_wake = False  # a delayed timer wake-up is pending (slow)

    def __repr__(self) -> str:
        return f"<SimNode {self.name} {self.status}{' stalled' if self.stalled else ''}>"


class _Stream:
    __slots__ = ("client", "epoch", "server", "addr", "data", "done")

    def __init__(self, client: SimNode, server: SimNode | None, addr: Address, data: bytes) -> None:
        self.client = client
        self.epoch = client.epoch
        self.server = server
        self.addr = addr
        self.data = data
        self.done = False


class SwimSimulation:
    """N members on one ``HeapClock`` and one seeded in-memory network.

    The N members exist from the start (``n0000``, ``n0001``, ... at
    10.0.x.y:7946).  With ``form=True`` the cluster forms as it would in
    practice: node 0 starts alone and node i starts ``join_spacing * i`` seconds
    later, joining through one earlier node chosen at random; run it
    (``run_until_converged``) before measuring.  With ``form=False`` nothing
    starts until ``start`` is called.
    """

    def __init__(
        self,
        n: int,
        seed: int = 0,
        config: SwimConfig | None = None,
        *,
        loss: float = 0.0,
        delay: tuple[float, float] = (0.0005, 0.001),
        duplicate: float = 0.0,
        stall_buffer: int = 200,
        stall_order: str = "timers-first",
        join_spacing: float = 0.01,
        form: bool = True,
        recording: bool = True,
        keyring_factory: Callable[[str], object] | None = None,
        swim_factory: Callable[..., Swim] = Swim,
    ) -> None:
        if stall_order not in ("timers-first", "io-first"):
            raise ValueError(f"stall_order must be 'timers-first' or 'io-first', not {stall_order!r}")
        self.seed = seed
        self.config = config if config is not None else SwimConfig.profile("lan")
        self.loss = loss
        self.delay = delay
        self.duplicate = duplicate
        self.stall_buffer = stall_buffer
        self.stall_order = stall_order
        self.recording = recording
        self.keyring_factory = keyring_factory
        self.swim_factory = swim_factory
        self.clock = HeapClock()
        self.rng = random.Random(f"swim-sim/{seed}/control")
        self.net_rng = random.Random(f"swim-sim/{seed}/network")
        self.nodes: list[SimNode] = []
        self.by_name: dict[str, SimNode] = {}
        self.by_addr: dict[Address, SimNode] = {}
        self.events: list[Event] = []
        self.stats = {"sent": 0, "lost": 0, "dropped": 0, "delivered": 0, "overflow": 0, "streams": 0,
                      "stream_failures": 0}
        self.listeners: list[Callable[[float, SimNode, MemberView, MemberView | None], None]] = []
        for i in range(n):
            node = self.add_node()
            if form:
                self.clock.schedule(i * join_spacing, self._form_join, node)

    # -- the cluster -----------------------------------------------------------

    @property
    def now(self) -> float:
        return self.clock.rightNow

    def node(self, name: str) -> SimNode:
        return self.by_name[name]

    def up(self) -> list[SimNode]:
        """Running nodes (stalled ones included), in creation order."""
        return [n for n in self.nodes if n.status == UP]

    def add_node(self, name: str | None = None, meta: bytes = b"") -> SimNode:
        """A new, not yet started member (``start`` it, or let formation do it)."""
        i = len(self.nodes)
        node = SimNode(name or node_name(i), node_addr(i), i, meta)
        if node.name in self.by_name:
            raise ValueError(f"duplicate node name {node.name!r}")
        self.nodes.append(node)
        self.by_name[node.name] = node
        self.by_addr[node.addr] = node
        return node

    def start(self, name: str, seeds: Sequence[str] = ()) -> SimNode:
        """Start (or restart, with fresh state) the named member, joining through ``seeds`` (names)."""
        node = self.by_name[name]
        self._stop(node, UP)
        node.rng = random.Random(f"swim-sim/{self.seed}/{node.name}/{node.epoch}")
        keyring = self.keyring_factory(node.name) if self.keyring_factory else None
        node.core = self.swim_factory(self.config, NodeInfo(node.name, node.addr, node.meta), node.rng,
                                      keyring=keyring, on_change=self._observer(node))
        node.live = 0
        node.started_at = self.now
        node.stopped_at = None
        self._emit(node, node.core.start(self.now, [self.by_name[s].addr for s in seeds]))
        self._rewake(node)
        return node

    def join(self, name: str | None = None, seeds: Sequence[str] | None = None) -> SimNode:
        """Add and start a new member now; seeds default to one running member chosen at random."""
        node = self.add_node(name)
        if seeds is None:
            running = [n.name for n in self.nodes if n.status == UP and n is not node]
            seeds = [self.rng.choice(running)] if running else []
        return self.start(node.name, seeds)

    def restart(self, name: str, seeds: Sequence[str] | None = None) -> SimNode:
        if seeds is None:
            running = [n.name for n in self.nodes if n.status == UP and n.name != name]
            seeds = [self.rng.choice(running)] if running else []
        return self.start(name, seeds)

    def crash(self, name: str) -> None:
        self._stop(self.by_name[name], CRASHED)

    def leave(self, name: str, linger: float = 0.0) -> None:
        node = self.by_name[name]
        self._emit(node, node.core.leave(self.now))
        self._rewake(node)
        if linger > 0:
            self.clock.schedule(self.now + linger, self._stop_epoch, node, node.epoch)
        else:
            self._stop(node, STOPPED)

    def stall(self, name: str, duration: float) -> None:
        """The process stops being scheduled for ``duration`` seconds (see the module docstring)."""
        node = self.by_name[name]
        if node.status != UP:
            return
        node.stalled = True
        node.stall_token += 1
        self.clock.schedule(self.now + duration, self._resume, node, node.epoch, node.stall_token)

    def intermittent_stalls(self, name: str, stall: tuple[float, float], gap: tuple[float, float],
                            until: float) -> None:
        """Stall ``name`` again and again until ``until``: run U(gap), stall U(stall), repeat."""
        rng = random.Random(f"swim-sim/{self.seed}/stalls/{name}")
        t = self.now + rng.uniform(*gap)
        while t < until:
            length = min(rng.uniform(*stall), until - t)
            self.clock.schedule(t, self.stall, name, length)
            t += length + rng.uniform(*gap)

    def slow(self, name: str, delay: tuple[float, float], until: float = math.inf, timers: bool = True) -> None:
        """From now until ``until``, every event of ``name`` is handled U(delay) seconds late (module docstring).

        With ``timers=False`` only what arrives (datagrams, streams) waits and the node's own timers fire on
        time: memberlist's case, whose timers run in their own goroutines while its packet handler lags.
        """
        node = self.by_name[name]
        lo, hi = delay
        if not 0 <= lo <= hi:
            raise ValueError(f"slow delay must be 0 <= low <= high, not {delay!r}")
        if node.status != UP:
            return
        node.slow = (lo, hi)
        node.slow_until = until
        node.slow_timers = timers
        if node.slow_rng is None:
            node.slow_rng = random.Random(f"swim-sim/{self.seed}/slow/{name}")

    def partition(self, *groups: Iterable[str]) -> None:
        """Each group its own island, everyone else another; reachability only inside an island."""
        for node in self.nodes:
            node.island = 0
        for k, group in enumerate(groups, start=1):
            for name in group:
                self.by_name[name].island = k

    def heal(self) -> None:
        self.partition()

    # -- running ---------------------------------------------------------------

    def run(self, seconds: float) -> None:
        self.clock.run_until(self.now + seconds)

    def run_until(self, when: float) -> None:
        self.clock.run_until(when)

    def converged(self) -> bool:
        """Every running member sees every other running member alive or suspect, and no one else."""
        up = self.up()
        want = len(up) - 1
        return all(n.live == want for n in up)

    def run_until_converged(self, timeout: float, step: float = 1.0, quiet: bool = False) -> float | None:
        """Run until ``converged()`` (and, with ``quiet``, no broadcasts queued); the time, or None."""
        end = self.now + timeout
        while self.now < end:
            self.run(min(step, end - self.now))
            if self.converged() and (not quiet or all(n.core.queue_depth == 0 for n in self.up())):
                return self.now
        return None

    def views(self, name: str) -> dict[str, str]:
        """The named member's view (subject → state), from the core itself."""
        return {m.name: m.state for m in self.by_name[name].core.members()}

    # -- internals: processes ----------------------------------------------------

    def _form_join(self, node: SimNode) -> None:
        earlier = [n.name for n in self.nodes[: node.index] if n.status == UP]
        self.start(node.name, [self.rng.choice(earlier)] if earlier else [])

    def _observer(self, node: SimNode) -> Callable[[MemberView, MemberView | None], None]:
        name = node.name

        def on_change(new: MemberView, old: MemberView | None) -> None:
            if new.name != name:
                was = old is not None and old.state in LIVE_STATES
                now_live = new.state in LIVE_STATES
                if was != now_live:
                    node.live += 1 if now_live else -1
            if self.recording:
                self.events.append(Event(self.clock.rightNow, name, new.name, new.state, new.incarnation))
            for listener in self.listeners:
                listener(self.clock.rightNow, node, new, old)

        return on_change

    def _stop(self, node: SimNode, status: str) -> None:
        node.epoch += 1
        node.status = status
        node.stopped_at = self.now if status != UP else None
        node.stalled = False
        node.io_backlog.clear()
        node.timer_backlog.clear()
        node.buffered = 0
        node.wake_at = math.inf
        node.slow = None
        node.slow_pending = 0
        node.late_wake = False

    def _stop_epoch(self, node: SimNode, epoch: int) -> None:
        if node.epoch == epoch:
            self._stop(node, STOPPED)

    def _slow_delay(self, node: SimNode) -> float | None:
        """The extra delay for one event of a slow node, or None if it is not slow (any more)."""
        slow = node.slow
        if slow is None:
            return None
        if self.clock.rightNow >= node.slow_until:
            node.slow = None
            return None
        lo, hi = slow
        return lo + node.slow_rng.random() * (hi - lo)

    def _handle_later(self, node: SimNode, epoch: int, func: Callable[..., None], args: tuple) -> None:
        """A slow node's delayed event: run it now, or queue it if the node has stalled meanwhile."""
        if node.epoch != epoch:
            return
        if node.stalled:
            node.io_backlog.append((func, args))
        else:
            func(*args)

    def _rewake(self, node: SimNode) -> None:
        if node.late_wake:
            return  # the delayed wake-up runs every timer due by then, then re-arms
        when = node.core.next_deadline()
        if when is not None and when < node.wake_at:
            node.wake_at = when
            self.clock.schedule(when, self._wake, node, node.epoch, when)

    def _wake(self, node: SimNode, epoch: int, when: float) -> None:
        if node.epoch != epoch or node.wake_at != when:
            return  # a dead process's timer, or superseded by an earlier wake-up
        node.wake_at = math.inf
        if node.stalled:
            return  # fires on resume
        late = self._slow_delay(node) if node.slow_timers else None
        if late is not None:
            node.late_wake = True
            self.clock.schedule(self.clock.rightNow + late, self._late_wake, node, epoch)
            return
        self._emit(node, node.core.advance(self.clock.rightNow))
        self._rewake(node)

    def _late_wake(self, node: SimNode, epoch: int) -> None:
        if node.epoch != epoch:
            return
        node.late_wake = False
        if node.stalled:
            return  # resume runs the overdue timers
        self._emit(node, node.core.advance(self.clock.rightNow))
        self._rewake(node)

    def _resume(self, node: SimNode, epoch: int, token: int) -> None:
        if node.epoch != epoch or node.stall_token != token:
            return
        node.stalled = False
        now = self.clock.rightNow
        io, timers = node.io_backlog, node.timer_backlog
        node.io_backlog, node.timer_backlog = deque(), deque()
        node.buffered = 0
        if self.stall_order == "timers-first":
            self._emit(node, node.core.advance(now))
            self._drain(node, epoch, timers)
            self._drain(node, epoch, io)
        else:
            self._drain(node, epoch, io)
            self._emit(node, node.core.advance(now))
            self._drain(node, epoch, timers)
        if node.epoch == epoch:
            self._rewake(node)

    def _drain(self, node: SimNode, epoch: int, backlog: deque) -> None:
        for func, args in backlog:
            if node.epoch != epoch or node.stalled:
                return
            func(*args)

    # -- internals: the network ----------------------------------------------------

    def _emit(self, node: SimNode, outputs: list) -> None:
        for out in outputs:
            if out.__class__ is SendPacket:
                self._send(node, out.addr, out.data)
            elif out.__class__ is OpenStream:
                self._open_stream(node, out)
            else:
                raise TypeError(f"{node.name}: unknown output {out!r}")

    def _latency(self) -> float:
        base, jitter = self.delay
        return base + self.net_rng.random() * jitter

    def _send(self, src: SimNode, addr: Address, data: bytes) -> None:
        stats = self.stats
        stats["sent"] += 1
        rng = self.net_rng
        if self.loss and rng.random() < self.loss:
            stats["lost"] += 1
            return
        dst = self.by_addr.get(addr)
        if dst is None or dst.island != src.island:
            stats["dropped"] += 1
            return
        now = self.clock.rightNow
        self.clock.schedule(now + self._latency(), self._deliver, src, dst, data)
        if self.duplicate and rng.random() < self.duplicate:
            self.clock.schedule(now + self._latency(), self._deliver, src, dst, data)

    def _deliver(self, src: SimNode, dst: SimNode, data: bytes) -> None:
        if dst.status != UP or dst.island != src.island:
            self.stats["dropped"] += 1
            return
        if dst.stalled:
            if dst.buffered >= self.stall_buffer:
                self.stats["overflow"] += 1
                return
            dst.buffered += 1
            dst.io_backlog.append((self._receive, (dst, src.addr, data)))
            return
        late = self._slow_delay(dst)
        if late is not None:
            if dst.slow_pending >= self.stall_buffer:
                self.stats["overflow"] += 1
                return
            dst.slow_pending += 1
            self.clock.schedule(self.clock.rightNow + late, self._slow_receive, dst, dst.epoch, src.addr, data)
            return
        self._receive(dst, src.addr, data)

    def _slow_receive(self, dst: SimNode, epoch: int, src: Address, data: bytes) -> None:
        if dst.epoch != epoch:
            return
        dst.slow_pending -= 1
        self._handle_later(dst, epoch, self._receive, (dst, src, data))

    def _receive(self, dst: SimNode, src: Address, data: bytes) -> None:
        self.stats["delivered"] += 1
        self._emit(dst, dst.core.receive_packet(self.clock.rightNow, src, data))
        self._rewake(dst)

    def _open_stream(self, client: SimNode, out: OpenStream) -> None:
        self.stats["streams"] += 1
        server = self.by_addr.get(out.addr)
        stream = _Stream(client, server, out.addr, out.data)
        now = self.clock.rightNow
        self.clock.schedule(now + self.config.tcp_timeout, self._stream_timeout, stream)
        if server is not None and server.island == client.island:
            arrive = now + self._latency() + self._latency() + self._latency()
            self.clock.schedule(arrive, self._stream_arrives, stream)

    def _stream_arrives(self, stream: _Stream) -> None:
        server = stream.server
        if server.status != UP or server.island != stream.client.island:
            return  # the client times out
        if server.stalled:
            server.io_backlog.append((self._serve, (stream, server.epoch)))
            return
        late = self._slow_delay(server)
        if late is not None:
            self.clock.schedule(self.clock.rightNow + late, self._handle_later, server, server.epoch, self._serve,
                                (stream, server.epoch))
        else:
            self._serve(stream, server.epoch)

    def _serve(self, stream: _Stream, epoch: int) -> None:
        server = stream.server
        if server.epoch != epoch:
            return
        reply, outputs = server.core.handle_stream(self.clock.rightNow, stream.client.addr, stream.data)
        self._emit(server, outputs)
        self._rewake(server)
        if server.island != stream.client.island:
            return
        self.clock.schedule(self.clock.rightNow + self._latency(), self._stream_answer, stream, reply)

    def _stream_answer(self, stream: _Stream, reply: bytes | None) -> None:
        client = stream.client
        if stream.done or client.epoch != stream.epoch or client.island != stream.server.island:
            return
        if client.stalled:
            client.io_backlog.append((self._stream_result, (stream, reply)))
        else:
            self._stream_event(client, stream, reply)

    def _stream_timeout(self, stream: _Stream) -> None:
        client = stream.client
        if stream.done or client.epoch != stream.epoch:
            return
        if client.stalled:
            client.timer_backlog.append((self._stream_result, (stream, None)))
        else:
            self._stream_event(client, stream, None)

    def _stream_event(self, client: SimNode, stream: _Stream, reply: bytes | None) -> None:
        late = self._slow_delay(client)
        if late is not None:
            self.clock.schedule(self.clock.rightNow + late, self._handle_later, client, client.epoch,
                                self._stream_result, (stream, reply))
        else:
            self._stream_result(stream, reply)

    def _stream_result(self, stream: _Stream, reply: bytes | None) -> None:
        if stream.done:
            return
        stream.done = True
        client = stream.client
        now = self.clock.rightNow
        if reply is None:
            self.stats["stream_failures"] += 1
            outputs = client.core.stream_failed(now, stream.addr)
        else:
            outputs = client.core.stream_reply(now, stream.addr, reply)
        self._emit(client, outputs)
        self._rewake(client)


# -- metrics over an event log ------------------------------------------------------


def first_times(events: Iterable[Event], subject: str, states: Sequence[str], since: float,
                incarnation: int | None = None) -> dict[str, float]:
    """Per observer, the first time at or after ``since`` it saw ``subject`` in one of ``states``."""
    out: dict[str, float] = {}
    for ev in events:
        if ev.subject == subject and ev.time >= since and ev.state in states and ev.observer not in out:
            if incarnation is None or ev.incarnation >= incarnation:
                out[ev.observer] = ev.time
    return out


class Detection(NamedTuple):
    first_suspect: float | None  # seconds after the crash until the first member suspected (or declared) it
    first_dead: float | None  # ... until the first member declared it dead
    dead_everywhere: float | None  # ... until every observer had it dead; None if one never did
    missing: tuple[str, ...]  # observers that never declared it dead


def detection(events: Iterable[Event], subject: str, crashed_at: float, observers: Iterable[str]) -> Detection:
    events = list(events)
    suspect = first_times(events, subject, ("suspect", "dead", "left"), crashed_at)
    dead = first_times(events, subject, ("dead", "left"), crashed_at)
    observers = [o for o in observers if o != subject]
    missing = tuple(o for o in observers if o not in dead)
    seen = [dead[o] for o in observers if o in dead]
    return Detection(
        first_suspect=min(suspect.values()) - crashed_at if suspect else None,
        first_dead=min(dead.values()) - crashed_at if dead else None,
        dead_everywhere=(max(seen) - crashed_at) if seen and not missing else None,
        missing=missing,
    )


def join_everywhere(events: Iterable[Event], subject: str, started_at: float,
                    observers: Iterable[str]) -> float | None:
    """Seconds from ``subject``'s start until every observer saw it alive; None if one never did."""
    alive = first_times(events, subject, ("alive",), started_at)
    times = []
    for o in observers:
        if o == subject:
            continue
        if o not in alive:
            return None
        times.append(alive[o])
    return (max(times) - started_at) if times else 0.0


def false_dead(events: Iterable[Event], healthy: Callable[[str, float], bool], since: float = 0.0) -> list[Event]:
    """``dead`` events about a member that ``healthy(subject, time)`` says was fine at that time."""
    return [ev for ev in events if ev.time >= since and ev.state == "dead" and ev.observer != ev.subject
            and healthy(ev.subject, ev.time)]


def suspicion_min(config: SwimConfig, n: int) -> float:
    """memberlist's suspicionTimeout: mult × max(1, log10(n)) × probe interval (the floor Lifeguard shrinks to)."""
    return config.suspicion_mult * max(1.0, math.log10(max(1, n))) * config.probe_interval
