"""The SWIM + Lifeguard state machine: bytes and time in, packets and streams out.

:class:`Swim` follows hashicorp/memberlist's state.go closely (probe, suspect,
refute, dead, push-pull merge) but is pure: every entry point takes ``now``,
all randomness comes from the injected ``rng``, and the effects are returned as
:class:`SendPacket` / :class:`OpenStream` values for an adapter (the Twisted
daemon or the simulator) to carry out.  The same seed and the same inputs give
the same outputs, byte for byte (given a deterministic keyring nonce source).

Where we differ from memberlist, and why:

* Probe timeout as well as probe interval is scaled by the health score
  (Lifeguard's LHA-Probe); memberlist scales only the interval.  A probe lasts
  one scaled interval, and the next probe starts when it ends.
* The buddy suspect message goes *before* the ping in the compound packet, and
  a node answers the pings of a packet only after processing the rest of it, so
  a refutation rides back on the very ack.
* A helper sends its nack at 80% of the requester's (scaled) probe timeout,
  carried in the ping-req, so the nack arrives before the requester gives up.
* No TCP fallback ping.
* Dead and left members are remembered for ``remember_dead_for`` (1 h) rather
  than 30 s; see config.py.  The cluster size estimate used for timeouts and
  retransmit limits counts alive and suspect members only.
* Push-pull answers are built *after* merging the initiator's state, so a
  refutation caused by the merge is in the reply.
* With Lifeguard on, a member that becomes suspect is probed next rather than when
  its turn in the round comes, and a member that hears an accusation it has already
  refuted (an older incarnation) repeats its current alive message instead of ignoring
  it.  Together they close the gap that produced false positives under heavy loss: a
  suspecter whose every gossip copy of the refutation was lost would otherwise wait out
  the whole suspicion timeout and declare a healthy member dead.
* After a stall, overdue timers run once at the real time (periodic ticks do not fire
  once per missed period), and a probe whose indirect checks had less than half a
  probe timeout to answer is inconclusive rather than a failure.
* A periodic rejoin pass (``rejoin_interval``) heals partitions; see
  :meth:`Swim._rejoin_tick`.
* ``leave`` raises the incarnation by one, so the leave outranks any alive
  message still in flight for the old incarnation.
"""

from __future__ import annotations

import heapq
import math
import random
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import attrs

from twisted_dhm.membership.swim import codec
from twisted_dhm.membership.swim.awareness import Awareness
from twisted_dhm.membership.swim.broadcasts import BroadcastQueue
from twisted_dhm.membership.swim.codec import FrameRejected
from twisted_dhm.membership.swim.config import SwimConfig
from twisted_dhm.membership.swim.keyring import Keyring
from twisted_dhm.membership.swim.suspicion import Suspicion, suspicion_timeout
from twisted_dhm.membership.view import ALIVE, DEAD, LEFT, SUSPECT

Address = tuple[str, int]

#: Past this many members, news about unknown names is ignored (memory bound against floods).
MAX_MEMBERS = 65_536
#: Dead members a rejoin pass tries besides the seeds.
REJOIN_DEAD_TARGETS = 2
#: Members that hear of a leave directly from the leaving node.
LEAVE_FANOUT = 3
#: Sampling by random tries (memberlist's kRandomNodes) only above this size; below, sample exactly.
_EXACT_SAMPLE_BELOW = 64
#: memberlist's pushPullScaleThreshold.
_PUSH_PULL_SCALE_THRESHOLD = 32
_MAX_SEQ = 0xFFFFFFFF
_MAX_HELPER_TIMEOUT = 60.0

STAT_KEYS = (
    "probes",
    "probe_failures",
    "indirect_probes",
    "ping_reqs_sent",
    "ping_reqs_received",
    "nacks_sent",
    "nacks_received",
    "suspicions",
    "refutations",
    "dead_declared",
    "packets_sent",
    "packets_received",
    "bytes_sent",
    "bytes_received",
    "decode_errors",
    "auth_failures",
    "push_pulls",
    "stream_failures",
    "rejoin_attempts",
    "address_conflicts",
    "misdirected_pings",
    "probes_inconclusive",
    "restated_alive",
)


@attrs.frozen
class NodeInfo:
    name: str
    addr: Address
    meta: bytes = b""  # opaque to the core, at most 512 bytes


@attrs.frozen
class MemberView:
    name: str
    addr: Address
    meta: bytes
    state: str  # ALIVE, SUSPECT, DEAD or LEFT (twisted_dhm.membership.view)
    incarnation: int


@attrs.frozen
class SendPacket:
    """One UDP datagram to send, already framed (and encrypted)."""

    addr: Address
    data: bytes


@attrs.frozen
class OpenStream:
    """Open TCP to ``addr``, send ``data`` as one length-prefixed frame, read one reply frame,
    then call :meth:`Swim.stream_reply` (or :meth:`Swim.stream_failed` on error or after
    ``config.tcp_timeout``)."""

    addr: Address
    data: bytes


Output = SendPacket | OpenStream
OnChange = Callable[[MemberView, "MemberView | None"], None]


class _Member:
    __slots__ = ("name", "addr", "meta", "incarnation", "state", "state_change", "index", "suspicion")

    def __init__(self, name: str, addr: Address, meta: bytes, incarnation: int, state: str, now: float) -> None:
        self.name = name
        self.addr = addr
        self.meta = meta
        self.incarnation = incarnation
        self.state = state
        self.state_change = now
        self.index = -1  # position in Swim._nodes; -1 for the local member
        self.suspicion: Suspicion | None = None

    def view(self) -> MemberView:
        return MemberView(self.name, self.addr, self.meta, self.state, self.incarnation)


class _Timer:
    __slots__ = ("fn", "args", "cancelled")

    def __init__(self, fn: Callable[..., None], args: tuple) -> None:
        self.fn = fn
        self.args = args
        self.cancelled = False


class _Probe:
    """Our own probe of one member, alive for one (scaled) probe interval."""

    __slots__ = ("seq", "target", "incarnation", "acked", "expected_nacks", "nacks", "timeout_timer",
                 "timeout", "timeout_due", "late")

    def __init__(self, seq: int, target: str, incarnation: int) -> None:
        self.seq = seq
        self.target = target
        self.incarnation = incarnation
        self.acked = False
        self.expected_nacks = 0
        self.nacks = 0
        self.timeout_timer: _Timer | None = None
        self.timeout = 0.0  # the (scaled) probe timeout when the probe started
        self.timeout_due = 0.0  # when the timeout was due to fire
        self.late = False  # it fired so late (we were stalled) that the helpers had no time


class _Relay:
    """A ping we send on someone else's behalf (ping-req): relay the ack, or nack in time."""

    __slots__ = ("requester", "seq", "nack_timer", "expiry_timer")

    def __init__(self, requester: Address, seq: int) -> None:
        self.requester = requester
        self.seq = seq
        self.nack_timer: _Timer | None = None
        self.expiry_timer: _Timer | None = None


def push_pull_scale(interval: float, n: int) -> float:
    """memberlist's pushPullScale: stretch full-state syncs in big clusters so their total
    cost grows like N log N rather than N squared."""
    if n <= _PUSH_PULL_SCALE_THRESHOLD:
        return interval
    return interval * (math.ceil(math.log2(n) - math.log2(_PUSH_PULL_SCALE_THRESHOLD)) + 1)


class Swim:
    """One member's SWIM protocol engine (see the module docstring for where it departs from memberlist)."""

    def __init__(
        self,
        config: SwimConfig,
        local: NodeInfo,
        rng: random.Random,
        keyring: Keyring | None = None,
        on_change: OnChange | None = None,
    ) -> None:
        if not codec.valid_name(local.name):
            raise ValueError(f"swim node name must be 1-{codec.MAX_NAME_BYTES} bytes of UTF-8: {local.name!r}")
        if not codec.valid_addr(local.addr[0], local.addr[1]):
            raise ValueError(f"swim address must be (host, port 1-65535): {local.addr!r}")
        if not codec.valid_meta(local.meta):
            raise ValueError(f"swim meta must be at most {codec.MAX_META_BYTES} bytes (got {len(local.meta)})")
        self.config = config
        self.rng = rng
        self.keyring = keyring
        self.on_change = on_change
        self.name = local.name
        self.addr: Address = (local.addr[0], int(local.addr[1]))
        self.stats: Counter[str] = Counter(dict.fromkeys(STAT_KEYS, 0))

        self._me = _Member(local.name, self.addr, local.meta, 1, ALIVE, 0.0)
        self._members: dict[str, _Member] = {local.name: self._me}
        self._nodes: list[_Member] = []  # every member but us, for O(1) random picks
        self._live = 1  # alive + suspect members, us included: the cluster size estimate
        self._awareness = Awareness(config.awareness_max_multiplier)
        self._queue = BroadcastQueue()
        self._overhead = codec.overhead(keyring)

        self._timers: list[tuple[float, int, _Timer]] = []
        self._timer_seq = 0
        self._seq = 0
        self._acks: dict[int, _Probe | _Relay] = {}
        self._probe: _Probe | None = None
        self._probe_list: list[str] = []
        self._probe_index = 0
        self._seeds: list[Address] = []
        self._join_backoff = 0.0  # seconds until the next join retry while we know nobody
        self._join_retry: _Timer | None = None
        self._started = False
        self._left = False
        self._out: list[Output] = []
        self._push_pull_cache: dict[bool, bytes] = {}

    # --- public API ---------------------------------------------------------------

    def start(self, now: float, seeds: Sequence[Address]) -> list[Output]:
        """Announce ourselves, join through ``seeds`` by push-pull and start the timers.

        Seeds that fail are retried by the rejoin pass while we know nobody else.
        """
        if self._started:
            return []
        self._started = True
        self._seeds = []
        for seed in seeds:
            addr = (seed[0], int(seed[1]))
            if addr != self.addr and addr not in self._seeds:
                self._seeds.append(addr)
        me = self._me
        me.state_change = now
        self._broadcast_alive(me)
        self._notify(me, None)
        rnd = self.rng.random
        cfg = self.config
        # Random first ticks, as memberlist's randStagger: a cluster started at once
        # must not probe and gossip in lockstep.
        self._schedule(now + rnd() * cfg.probe_interval, self._probe_tick)
        self._schedule(now + rnd() * cfg.gossip_interval, self._gossip_tick)
        self._schedule(now + rnd() * cfg.push_pull_interval, self._push_pull_tick)
        self._schedule(now + (0.5 + rnd()) * cfg.rejoin_interval, self._rejoin_tick)
        request = self._push_pull_frame(join=True)
        for addr in self._seeds:
            self._out.append(OpenStream(addr, request))
        return self._flush()

    def advance(self, now: float) -> list[Output]:
        """Run every timer due at or before ``now``, in due order, each at the real time ``now``.

        After a stall (a GC pause, a starved CPU) a periodic tick therefore fires once and
        re-arms from ``now``, rather than firing once per missed period and probing (and
        suspecting) a burst of members at the same instant.
        """
        if self._left:
            self._timers.clear()  # after leave() only packets and streams are served
            return self._flush()
        timers = self._timers
        while timers and timers[0][0] <= now:
            when, _, timer = heapq.heappop(timers)
            if not timer.cancelled:
                timer.fn(now, *timer.args)
        return self._flush()

    def next_deadline(self) -> float | None:
        if self._left:
            return None
        timers = self._timers
        while timers and timers[0][2].cancelled:
            heapq.heappop(timers)
        return timers[0][0] if timers else None

    def receive_packet(self, now: float, src: Address, data: bytes) -> list[Output]:
        """Handle one datagram.  Bad bytes are counted (decode_errors, auth_failures), never raised."""
        stats = self.stats
        stats["packets_received"] += 1
        stats["bytes_received"] += len(data)
        try:
            packet = codec.parse_packet(codec.open_frame(data, self.keyring, codec.PACKET_LABEL))
        except FrameRejected as e:
            stats["auth_failures" if e.auth else "decode_errors"] += 1
            return self._flush()
        to_ack: list[int] = []
        for msg in packet.messages:
            kind = msg.WhichOneof("body")
            if kind == "ping":
                p = msg.ping
                if p.target and p.target != self.name:
                    stats["misdirected_pings"] += 1
                else:
                    to_ack.append(p.seq)
            elif kind == "ack":
                self._on_ack(now, msg.ack.seq)
            elif kind == "alive":
                a = msg.alive
                if codec.valid_name(a.name) and codec.valid_addr(a.host, a.port) and codec.valid_meta(a.meta):
                    self._on_alive(now, a.incarnation, a.name, (a.host, a.port), a.meta, msg)
                else:
                    stats["decode_errors"] += 1
            elif kind == "suspect":
                s = msg.suspect
                if codec.valid_name(s.name) and codec.valid_name(s.from_node):
                    self._on_suspect(now, s.incarnation, s.name, s.from_node)
                else:
                    stats["decode_errors"] += 1
            elif kind == "dead":
                d = msg.dead
                if codec.valid_name(d.name) and codec.valid_name(d.from_node):
                    self._on_dead(now, d.incarnation, d.name, d.from_node)
                else:
                    stats["decode_errors"] += 1
            elif kind == "indirect_ping":
                self._on_indirect_ping(now, src, msg.indirect_ping)
            elif kind == "nack":
                stats["nacks_received"] += 1
                pending = self._acks.get(msg.nack.seq)
                if isinstance(pending, _Probe) and not pending.acked:
                    pending.nacks += 1
            else:
                stats["decode_errors"] += 1  # unknown message type (or an empty one)
        # Acks go out after the whole packet is processed: a refutation triggered by a
        # buddy suspect message in the same packet then rides back on the ack.
        for seq in to_ack:
            self._send(src, [codec.ack(seq)])
        return self._flush()

    def handle_stream(self, now: float, src: Address, data: bytes) -> tuple[bytes | None, list[Output]]:
        """Serve a push-pull: merge the initiator's state, answer with ours (None: close, no reply)."""
        try:
            msg = codec.parse_push_pull(codec.open_frame(data, self.keyring, codec.STREAM_LABEL))
        except FrameRejected as e:
            self.stats["auth_failures" if e.auth else "decode_errors"] += 1
            return None, self._flush()
        self._merge(now, msg)
        self.stats["push_pulls"] += 1
        return self._push_pull_frame(join=False), self._flush()

    def stream_reply(self, now: float, addr: Address, data: bytes) -> list[Output]:
        try:
            msg = codec.parse_push_pull(codec.open_frame(data, self.keyring, codec.STREAM_LABEL))
        except FrameRejected as e:
            self.stats["auth_failures" if e.auth else "decode_errors"] += 1
            return self._flush()
        self._merge(now, msg)
        self.stats["push_pulls"] += 1
        return self._flush()

    def stream_failed(self, now: float, addr: Address) -> list[Output]:
        """A push-pull we opened failed; the periodic push-pull and rejoin passes retry.

        A join that failed because no seed was up yet (nodes started together) is
        retried sooner: after 1 s, then twice as long each time up to ``rejoin_interval``.
        """
        self.stats["stream_failures"] += 1
        if self._started and not self._left and self._live == 1 and addr in self._seeds and self._join_retry is None:
            self._join_backoff = min(max(1.0, 2 * self._join_backoff), self.config.rejoin_interval)
            delay = self._join_backoff * (0.75 + 0.5 * self.rng.random())
            self._join_retry = self._schedule(now + delay, self._retry_join)
        return self._flush()

    def _retry_join(self, now: float) -> None:
        self._join_retry = None
        if self._live > 1:
            self._join_backoff = 0.0
            return
        request = self._push_pull_frame(join=True)
        for addr in self._seeds:
            self.stats["rejoin_attempts"] += 1
            self._out.append(OpenStream(addr, request))

    def leave(self, now: float) -> list[Output]:
        """Announce a graceful leave and stop every timer.

        The leave is a dead message from ourselves about ourselves at incarnation + 1;
        it is queued for piggy-backing (we still answer pings until the adapter
        stops us) and sent at once to a few members.  The adapter should flush
        these packets, wait a moment if it likes, then stop.
        """
        if self._left:
            return []
        self._left = True
        me = self._me
        old = me.view()
        me.incarnation = min(me.incarnation + 1, codec.MAX_INCARNATION)
        me.state = LEFT
        me.state_change = now
        self._live -= 1
        self._queue.put(me.name, codec.dead(me.incarnation, me.name, me.name))
        self._notify(me, old)
        for timer_entry in self._timers:
            timer_entry[2].cancelled = True
        self._timers.clear()
        self._probe = None
        fanout = max(LEAVE_FANOUT, self.config.gossip_nodes)
        for member in self._random_members(fanout, lambda m: m.state == ALIVE or m.state == SUSPECT):
            self._send(member.addr, [])
        return self._flush()

    def update_meta(self, now: float, meta: bytes) -> list[Output]:
        """Change our metadata and re-announce it under a higher incarnation."""
        if not codec.valid_meta(meta):
            raise ValueError(f"swim meta must be at most {codec.MAX_META_BYTES} bytes (got {len(meta)})")
        if self._left:
            return []
        me = self._me
        old = me.view()
        me.meta = bytes(meta)
        me.incarnation = min(me.incarnation + 1, codec.MAX_INCARNATION)
        self._broadcast_alive(me)
        self._notify(me, old)
        return self._flush()

    def members(self) -> list[MemberView]:
        """Every member we know of, us included, sorted by name."""
        return [self._members[name].view() for name in sorted(self._members)]

    @property
    def health_score(self) -> int:
        return self._awareness.score

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    @property
    def incarnation(self) -> int:
        return self._me.incarnation

    @property
    def num_live(self) -> int:
        """Alive and suspect members, us included: the size estimate the timeouts use."""
        return self._live

    # --- timers ---------------------------------------------------------------------

    def _schedule(self, when: float, fn: Callable[..., None], *args: Any) -> _Timer:
        timer = _Timer(fn, args)
        self._timer_seq += 1
        heapq.heappush(self._timers, (when, self._timer_seq, timer))
        return timer

    def _scaled(self, timeout: float) -> float:
        return self._awareness.scale(timeout) if self.config.lifeguard else timeout

    # --- probing ----------------------------------------------------------------------

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) & _MAX_SEQ
        return self._seq

    def _probe_tick(self, now: float) -> None:
        self._finish_probe(now)
        self._schedule(now + self._scaled(self.config.probe_interval), self._probe_tick)
        target = self._next_probe_target(now)
        if target is None:
            return
        seq = self._next_seq()
        probe = _Probe(seq, target.name, target.incarnation)
        self._probe = probe
        self._acks[seq] = probe
        entries = []
        if self.config.lifeguard and target.state == SUSPECT:
            # Buddy system: tell the suspect it is suspected so it can refute at once.
            entries.append(codec.suspect(target.incarnation, target.name, self.name))
        entries.append(codec.ping(seq, target.name, self.name, self.addr[0], self.addr[1]))
        self.stats["probes"] += 1
        self._send(target.addr, entries)
        probe.timeout = self._scaled(self.config.probe_timeout)
        probe.timeout_due = now + probe.timeout
        probe.timeout_timer = self._schedule(probe.timeout_due, self._probe_timeout, probe)

    def _next_probe_target(self, now: float) -> _Member | None:
        """Randomised round-robin: one shuffled pass over the live members, then a new shuffle."""
        rebuilt = False
        while True:
            if self._probe_index >= len(self._probe_list):
                if rebuilt:
                    return None
                self._rebuild_probe_list(now)
                rebuilt = True
                if not self._probe_list:
                    return None
            name = self._probe_list[self._probe_index]
            self._probe_index += 1
            member = self._members.get(name)
            if member is not None and member is not self._me and (member.state == ALIVE or member.state == SUSPECT):
                return member

    def _rebuild_probe_list(self, now: float) -> None:
        """Once per pass (O(N) per N probes): forget long-dead members, reshuffle the live ones."""
        horizon = now - self.config.remember_dead_for
        for member in [m for m in self._nodes if (m.state == DEAD or m.state == LEFT) and m.state_change < horizon]:
            self._forget(member)
        names = [m.name for m in self._nodes if m.state == ALIVE or m.state == SUSPECT]
        self.rng.shuffle(names)
        self._probe_list = names
        self._probe_index = 0

    def _add_to_probe_list(self, name: str) -> None:
        """A member that (re)appears joins the current pass at a random position, as in memberlist."""
        lst = self._probe_list
        lst.append(name)
        i = self.rng.randrange(len(lst))
        lst[i], lst[-1] = lst[-1], lst[i]

    def _probe_timeout(self, now: float, probe: _Probe) -> None:
        """No direct ack in time: ask a few other members to probe the target for us."""
        if probe is not self._probe or probe.acked:
            return
        # Fired far past its time: we were stalled (timers run at the real time), and the end
        # of the period is due right now too, so neither the target nor helpers can answer.
        probe.late = now - probe.timeout_due > 0.5 * probe.timeout
        target = self._members.get(probe.target)
        if target is None:
            return
        helpers = self._random_members(
            self.config.indirect_checks,
            lambda m: m.state == ALIVE and m is not target,
        )
        if not helpers:
            return
        self.stats["indirect_probes"] += 1
        lifeguard = self.config.lifeguard
        timeout_ms = min(int(self._scaled(self.config.probe_timeout) * 1000), 0xFFFFFFFF)
        req = codec.indirect_ping(
            probe.seq, target.name, target.addr[0], target.addr[1], lifeguard, timeout_ms, self.name
        )
        for helper in helpers:
            self.stats["ping_reqs_sent"] += 1
            self._send(helper.addr, [req])
        if lifeguard:
            probe.expected_nacks = len(helpers)

    def _finish_probe(self, now: float) -> None:
        probe = self._probe
        if probe is None:
            return
        self._probe = None
        self._acks.pop(probe.seq, None)
        if probe.acked:
            return
        if probe.late:
            # The ping-reqs went out only just now: we were stalled past the probe timeout and
            # the period ended before the helpers could answer.  Our lateness is no evidence
            # against the target; count it against our own health instead.
            self.stats["probes_inconclusive"] += 1
            if self.config.lifeguard:
                self._awareness.apply_delta(1)
            return
        self.stats["probe_failures"] += 1
        if self.config.lifeguard:
            # Missing nacks mean *we* may be the problem; with nobody to ask, any failure counts.
            if probe.expected_nacks > 0:
                self._awareness.apply_delta(max(0, probe.expected_nacks - probe.nacks))
            else:
                self._awareness.apply_delta(1)
        self._on_suspect(now, probe.incarnation, probe.target, self.name)

    def _on_ack(self, now: float, seq: int) -> None:
        pending = self._acks.pop(seq, None)
        if pending is None:
            return
        if isinstance(pending, _Probe):
            if not pending.acked:
                pending.acked = True
                if self.config.lifeguard:
                    self._awareness.apply_delta(-1)
            return
        # An ack for a ping we sent on someone's behalf: relay it, and no nack.
        if pending.nack_timer is not None:
            pending.nack_timer.cancelled = True
        if pending.expiry_timer is not None:
            pending.expiry_timer.cancelled = True
        self._send(pending.requester, [codec.ack(pending.seq)])

    def _on_indirect_ping(self, now: float, src: Address, req: Any) -> None:
        self.stats["ping_reqs_received"] += 1
        if not (
            codec.valid_name(req.target)
            and codec.valid_addr(req.target_host, req.target_port)
            and codec.valid_optional_name(req.source)
        ):
            self.stats["decode_errors"] += 1
            return
        seq = self._next_seq()
        relay = _Relay(src, req.seq)
        self._acks[seq] = relay
        self._send(
            (req.target_host, req.target_port), [codec.ping(seq, req.target, self.name, self.addr[0], self.addr[1])]
        )
        timeout = req.timeout_ms / 1000.0 if req.timeout_ms else self.config.probe_timeout
        timeout = min(timeout, _MAX_HELPER_TIMEOUT)
        if req.nack:
            relay.nack_timer = self._schedule(now + 0.8 * timeout, self._send_nack, relay)
        relay.expiry_timer = self._schedule(now + timeout, self._expire_relay, seq, relay)

    def _send_nack(self, now: float, relay: _Relay) -> None:
        self.stats["nacks_sent"] += 1
        self._send(relay.requester, [codec.nack(relay.seq)])

    def _expire_relay(self, now: float, seq: int, relay: _Relay) -> None:
        if self._acks.get(seq) is relay:
            del self._acks[seq]

    # --- membership state machine (memberlist's aliveNode / suspectNode / deadNode) -----

    def _on_alive(self, now: float, inc: int, name: str, addr: Address, meta: bytes, msg: Any = None) -> None:
        if name == self.name:
            self._on_alive_about_me(inc, addr, meta)
            return
        member = self._members.get(name)
        if member is None:
            if len(self._members) >= MAX_MEMBERS:
                return
            member = _Member(name, addr, bytes(meta), inc, ALIVE, now)
            self._members[name] = member
            member.index = len(self._nodes)
            self._nodes.append(member)
            self._live += 1
            self._add_to_probe_list(name)
            self._rebroadcast_alive(member, msg)
            self._notify(member, None)
            return
        addr_changed = addr != member.addr
        if addr_changed:
            reclaim = self.config.dead_node_reclaim_time
            can_reclaim = reclaim > 0 and now - member.state_change > reclaim
            if not (member.state == LEFT or (member.state == DEAD and can_reclaim)):
                self.stats["address_conflicts"] += 1
                return
        elif inc <= member.incarnation:
            return
        old = member.view()
        self._clear_suspicion(member)
        was_down = member.state == DEAD or member.state == LEFT
        member.incarnation = inc
        member.meta = bytes(meta)
        member.addr = addr
        if member.state != ALIVE:
            member.state = ALIVE
            member.state_change = now
        if was_down:
            self._live += 1
            self._add_to_probe_list(name)
        self._rebroadcast_alive(member, msg)
        self._notify(member, old)

    def _on_alive_about_me(self, inc: int, addr: Address, meta: bytes) -> None:
        me = self._me
        if self._left or addr != me.addr or inc < me.incarnation:
            # A different address under our name is a conflict we cannot settle by refuting.
            if addr != me.addr and not self._left:
                self.stats["address_conflicts"] += 1
            return
        if inc == me.incarnation and meta == me.meta:
            return
        # Someone announces us with other meta or a newer incarnation (an older
        # life of ours, before a restart): overrule it.
        self._refute(inc)

    def _on_suspect(self, now: float, inc: int, name: str, from_node: str) -> None:
        member = self._members.get(name)
        if member is None:
            return
        if inc < member.incarnation:
            if member is self._me:
                self._restate_alive()
            return
        susp = member.suspicion
        if susp is not None:
            # Independent confirmations shrink the timeout (Lifeguard); re-gossip new ones.
            if susp.confirm(from_node):
                self._queue.put(name, codec.suspect(inc, name, from_node))
                self._arm_suspicion(now, member, susp)
            return
        if member.state != ALIVE:
            return
        if member is self._me:
            if not self._left:
                self._refute(inc)
            return
        self._queue.put(name, codec.suspect(inc, name, from_node))
        old = member.view()
        member.incarnation = inc
        member.state = SUSPECT
        member.state_change = now
        cfg = self.config
        n = self._live
        min_timeout = suspicion_timeout(cfg.suspicion_mult, n, cfg.probe_interval)
        if cfg.lifeguard:
            # Expect k confirmations, as memberlist: fewer when there are too few others to give them.
            k = cfg.suspicion_mult - 2
            if n - 2 < k:
                k = 0
            max_timeout = cfg.suspicion_max_timeout_mult * min_timeout
        else:
            k = 0
            max_timeout = min_timeout
        susp = Suspicion(from_node, k, min_timeout, max_timeout, now)
        member.suspicion = susp
        self.stats["suspicions"] += 1
        if cfg.lifeguard:
            # Probe a new suspect next, not a whole round (up to N periods) later: with the
            # buddy system the probe tells it it is suspected, and its ack brings back the
            # refutation even if every gossip copy of it missed us.
            # Moved, not added (O(N), once per suspicion): the round stays one slot per member.
            # A suspect probed earlier in this round gets one more slot; the index steps back
            # with the removal so the member that was next is not skipped.
            rest = self._probe_list
            try:
                j = rest.index(name)
            except ValueError:
                j = -1
            if j >= 0:
                del rest[j]
                if j < self._probe_index:
                    self._probe_index -= 1
            self._probe_index = min(self._probe_index, len(rest))
            rest.insert(self._probe_index, name)
        self._arm_suspicion(now, member, susp)
        self._notify(member, old)

    def _arm_suspicion(self, now: float, member: _Member, susp: Suspicion) -> None:
        if susp.timer is not None:
            susp.timer.cancelled = True
        deadline = susp.deadline()
        if deadline <= now:
            susp.timer = None
            self._suspicion_expired(now, member, susp)
        else:
            susp.timer = self._schedule(deadline, self._suspicion_expired, member, susp)

    def _suspicion_expired(self, now: float, member: _Member, susp: Suspicion) -> None:
        if member.suspicion is not susp or member.state != SUSPECT:
            return
        self.stats["dead_declared"] += 1
        self._on_dead(now, member.incarnation, member.name, self.name)

    def _clear_suspicion(self, member: _Member) -> None:
        susp = member.suspicion
        if susp is not None:
            if susp.timer is not None:
                susp.timer.cancelled = True
            member.suspicion = None

    def _on_dead(self, now: float, inc: int, name: str, from_node: str) -> None:
        member = self._members.get(name)
        if member is None:
            return
        if inc < member.incarnation:
            if member is self._me:
                self._restate_alive()
            return
        self._clear_suspicion(member)
        if member.state == DEAD or member.state == LEFT:
            return
        if member is self._me:
            if not self._left:
                self._refute(inc)
            return
        self._queue.put(name, codec.dead(inc, name, from_node))
        old = member.view()
        member.incarnation = inc
        member.state = LEFT if from_node == name else DEAD
        member.state_change = now
        self._live -= 1
        self._notify(member, old)

    def _restate_alive(self) -> None:
        """Someone still acts on an accusation we already refuted (our refutation missed it).

        memberlist ignores such stale news; then the accuser's suspicion can run out and
        declare us dead on its own.  Queuing our current alive again costs nothing and, since
        the accusation usually comes with a probe (the buddy system), it rides back on the ack.
        """
        if not self._left:
            self.stats["restated_alive"] += 1
            self._broadcast_alive(self._me)

    def _refute(self, accused: int) -> None:
        """We are said to be suspect, dead or different: outbid the claim with a higher incarnation."""
        me = self._me
        inc = me.incarnation + 1
        if accused >= inc:
            inc = accused + 1
        inc = min(inc, codec.MAX_INCARNATION)
        old = me.view()
        me.incarnation = inc
        if self.config.lifeguard:
            self._awareness.apply_delta(1)
        self.stats["refutations"] += 1
        self._broadcast_alive(me)
        self._notify(me, old)

    def _forget(self, member: _Member) -> None:
        """Drop a long-dead member for good (swap-remove from the sampling list)."""
        del self._members[member.name]
        self._push_pull_cache.clear()
        last = self._nodes.pop()
        if last is not member:
            self._nodes[member.index] = last
            last.index = member.index
        member.index = -1
        self._clear_suspicion(member)
        self._queue.drop(member.name)

    # --- dissemination ------------------------------------------------------------------

    def _broadcast_alive(self, member: _Member) -> None:
        host, port = member.addr
        self._queue.put(member.name, codec.alive(member.incarnation, member.name, host, port, member.meta))

    def _rebroadcast_alive(self, member: _Member, msg: Any) -> None:
        # Re-gossip the message as received (keeps fields a newer version may add),
        # unless those extras would make it too big for a packet of ours.
        if msg is not None:
            item = codec.entry(msg.SerializeToString())
            if len(item) <= self.config.mtu - self._overhead:
                self._queue.put(member.name, item)
                return
        self._broadcast_alive(member)

    def _transmit_limit(self) -> int:
        return self.config.retransmit_mult * max(1, math.ceil(math.log10(self._live + 1)))

    def _send(self, addr: Address, entries: list[bytes]) -> None:
        """One datagram: ``entries`` first, then as many queued broadcasts as still fit in the MTU."""
        room = self.config.mtu - self._overhead
        for e in entries:
            room -= len(e)
        if self._queue:
            extra = self._queue.take(room, self._transmit_limit())
            if extra:
                entries = entries + extra
        data = codec.seal(b"".join(entries), self.keyring, codec.PACKET_LABEL)
        self.stats["packets_sent"] += 1
        self.stats["bytes_sent"] += len(data)
        self._out.append(SendPacket(addr, data))

    def _gossip_tick(self, now: float) -> None:
        cfg = self.config
        self._schedule(now + cfg.gossip_interval, self._gossip_tick)
        if not self._queue:
            return
        dead_horizon = now - cfg.gossip_to_the_dead_time
        targets = self._random_members(
            cfg.gossip_nodes,
            lambda m: m.state == ALIVE or m.state == SUSPECT or (m.state == DEAD and m.state_change >= dead_horizon),
        )
        room = cfg.mtu - self._overhead
        for member in targets:
            entries = self._queue.take(room, self._transmit_limit())
            if not entries:
                break
            data = codec.seal(b"".join(entries), self.keyring, codec.PACKET_LABEL)
            self.stats["packets_sent"] += 1
            self.stats["bytes_sent"] += len(data)
            self._out.append(SendPacket(member.addr, data))

    def _random_members(self, k: int, accept: Callable[[_Member], bool]) -> list[_Member]:
        """Up to ``k`` distinct random members passing ``accept`` (memberlist's kRandomNodes).

        Small clusters sample exactly; big ones make a bounded number of random
        tries so a pick costs O(k), not O(N).
        """
        nodes = self._nodes
        n = len(nodes)
        if k <= 0 or n == 0:
            return []
        if n < _EXACT_SAMPLE_BELOW:
            candidates = [m for m in nodes if accept(m)]
            if len(candidates) <= k:
                self.rng.shuffle(candidates)
                return candidates
            return self.rng.sample(candidates, k)
        chosen: list[_Member] = []
        randrange = self.rng.randrange
        for _ in range(min(3 * n, 3 * k + 64)):
            m = nodes[randrange(n)]
            if accept(m) and m not in chosen:
                chosen.append(m)
                if len(chosen) >= k:
                    break
        return chosen

    # --- push-pull and rejoin -----------------------------------------------------------

    def _push_pull_frame(self, join: bool) -> bytes:
        # The body is cached until a member changes: in a big, quiet cluster most
        # push-pulls find the table as the previous one left it (about 1 ms saved at N=1000).
        body = self._push_pull_cache.get(join)
        if body is None:
            members = [(m.name, m.addr[0], m.addr[1], m.meta, m.incarnation, m.state) for m in self._members.values()]
            body = self._push_pull_cache[join] = codec.push_pull(join, members)
        return codec.seal(body, self.keyring, codec.STREAM_LABEL)

    def _merge(self, now: float, msg: Any) -> None:
        """memberlist's mergeState: their alive is news, their left is a leave, and their
        dead is only a suspicion (we let our own timers decide)."""
        bad = 0
        for r in msg.members:
            name = r.name
            if not codec.valid_name(name):
                bad += 1
                continue
            state = r.state
            if state == 0:  # SWIM_STATE_ALIVE
                if not (codec.valid_addr(r.host, r.port) and codec.valid_meta(r.meta)):
                    bad += 1
                    continue
                self._on_alive(now, r.incarnation, name, (r.host, r.port), r.meta)
            elif state == 3:  # SWIM_STATE_LEFT
                self._on_dead(now, r.incarnation, name, name)
            elif state == 1 or state == 2:  # SUSPECT, DEAD
                self._on_suspect(now, r.incarnation, name, self.name)
            else:
                bad += 1
        if bad:
            self.stats["decode_errors"] += 1

    def _push_pull_tick(self, now: float) -> None:
        cfg = self.config
        self._schedule(now + push_pull_scale(cfg.push_pull_interval, self._live), self._push_pull_tick)
        targets = self._random_members(1, lambda m: m.state == ALIVE)
        if targets:
            self._out.append(OpenStream(targets[0].addr, self._push_pull_frame(join=False)))

    def _rejoin_tick(self, now: float) -> None:
        """Push-pull with the seeds we do not see alive and a couple of dead members.

        Runs only while we know nobody alive or hold dead members.  Alone, this
        is a retried join.  After a partition, each side sees the other as dead;
        a push-pull to any member of the other side makes both sides learn the
        other's view, the members wrongly believed dead refute (their
        incarnation rises) and the two halves merge without outside help.  Its
        cost is a failed connection per pass for members that are really dead,
        for at most ``remember_dead_for``; the pass is scaled like push-pull so
        a big cluster does not hammer its seeds.
        """
        cfg = self.config
        self._schedule(now + push_pull_scale(cfg.rejoin_interval, self._live), self._rejoin_tick)
        dead = [m for m in self._nodes if m.state == DEAD]
        if self._live > 1 and not dead:
            return
        live_addrs = {m.addr for m in self._nodes if m.state == ALIVE or m.state == SUSPECT}
        targets = [s for s in self._seeds if s not in live_addrs]
        if dead:
            picks = dead if len(dead) <= REJOIN_DEAD_TARGETS else self.rng.sample(dead, REJOIN_DEAD_TARGETS)
            for m in picks:
                if m.addr not in targets and m.addr != self.addr:
                    targets.append(m.addr)
        if not targets:
            return
        frame = self._push_pull_frame(join=False)
        for addr in targets:
            self.stats["rejoin_attempts"] += 1
            self._out.append(OpenStream(addr, frame))

    # --- plumbing -------------------------------------------------------------------------

    def _notify(self, member: _Member, old: MemberView | None) -> None:
        """Every change of a member goes through here (also to drop the cached push-pull body)."""
        self._push_pull_cache.clear()
        if self._live > 1:
            self._join_backoff = 0.0  # we know someone: a later spell alone starts retrying at 1 s
        if self.on_change is not None:
            self.on_change(member.view(), old)

    def _flush(self) -> list[Output]:
        out = self._out
        self._out = []
        return out
