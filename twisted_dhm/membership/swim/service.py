"""The daemon's side of SWIM: a thin adapter that carries the core's packets and streams.

:class:`SwimMembership` owns one :class:`~twisted_dhm.membership.swim.core.Swim`
and does only what the pure core cannot: it listens on UDP and TCP (the same
port number) through the injected network, passes each datagram and stream
frame in with the injected clock's time, sends what comes out, keeps one timer
armed for the core's next deadline, and turns the core's member changes into
the node's :class:`~twisted_dhm.membership.view.MembershipView`.

Member metadata (what the ring and the coordinator need besides the gossip
address) travels as a small JSON object: native-protocol and REST ports, ring
weight and software version.  A member whose metadata does not decode is left
out of the view (and logged), never guessed at.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IDelayedCall, IListeningPort, IReactorTime
from twisted.internet.protocol import DatagramProtocol, Factory
from twisted.protocols.basic import Int32StringReceiver
from twisted.python.failure import Failure

from twisted_dhm import logs
from twisted_dhm.membership.swim.config import SwimConfig
from twisted_dhm.membership.swim.core import Address, MemberView, NodeInfo, OpenStream, Output, SendPacket, Swim
from twisted_dhm.membership.swim.keyring import Keyring
from twisted_dhm.membership.view import DEAD, LEFT, MAX_WEIGHT, SUSPECT, Member, MembershipView
from twisted_dhm.network import INetwork
from twisted_dhm.versions import NODE_ID

log = logs.logger("dhashmap.gossip")

#: Largest push-pull frame accepted: the whole member list (a few dozen bytes a member).
MAX_STREAM_FRAME = 8 * 1024 * 1024
#: Sizes of datagrams sent and received, for the packet-size histogram (bytes).
PACKET_BUCKETS = (64, 128, 256, 512, 1024, 1400, 2048, 65536)
KEYRING_FILE = "gossip-keyring"


class GossipError(Exception):
    """A request to change the gossip set-up that cannot be honoured; the message says why."""


class KeyringNotSaved(GossipError):
    """The new key ring could not be written to disk (so it was not applied either)."""


# -- member metadata -------------------------------------------------------------------------


def encode_meta(peer_port: int, rest_port: int, weight: int, software_version: str, grpc_port: int = 0) -> bytes:
    meta = {"peer": peer_port, "rest": rest_port, "weight": weight, "version": software_version}
    if grpc_port:
        meta["grpc"] = grpc_port
    return json.dumps(meta, separators=(",", ":"), sort_keys=True).encode()


def decode_meta(raw: bytes) -> dict[str, Any]:
    """The metadata of a member, checked; ValueError if it is not what a node sends."""
    try:
        meta = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"member metadata is not JSON: {e}") from None
    if not isinstance(meta, dict):
        raise ValueError("member metadata is not a JSON object")
    out: dict[str, Any] = {}
    for name, low, high in (("peer", 1, 65535), ("rest", 0, 65535), ("weight", 1, MAX_WEIGHT)):
        value = meta.get(name)
        if type(value) is not int or not low <= value <= high:
            raise ValueError(f"member metadata {name!r} must be an integer from {low} to {high}")
        out[name] = value
    grpc_port = meta.get("grpc", 0)
    if type(grpc_port) is not int or not 0 <= grpc_port <= 65535:
        raise ValueError("member metadata 'grpc' must be an integer from 0 to 65535")
    out["grpc"] = grpc_port
    version = meta.get("version", "")
    if not isinstance(version, str) or len(version) > 64:
        raise ValueError("member metadata 'version' must be a string of at most 64 characters")
    out["version"] = version
    return out


# -- key ring file ---------------------------------------------------------------------------


def read_keyring_file(path: str) -> list[bytes] | None:
    """Keys saved by an earlier run (primary first), or None if there is no file."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise GossipError(f"cannot read the gossip key ring {path}: {e}") from None
    try:
        keys = [base64.b64decode(k, validate=True) for k in data["keys"]]
    except (KeyError, TypeError, ValueError) as e:
        raise GossipError(f"the gossip key ring {path} is not a list of base64 keys: {e}") from None
    if not keys or any(len(k) not in (16, 24, 32) for k in keys):
        raise GossipError(f"the gossip key ring {path} must hold AES keys of 16, 24 or 32 bytes")
    return keys


def write_keyring_file(path: str, keys: Sequence[bytes]) -> None:
    """Replace the file atomically and durably (write, fsync, rename), readable by the owner only."""
    tmp = path + ".tmp"
    data = json.dumps({"keys": [base64.b64encode(k).decode() for k in keys]}).encode()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def fingerprint(key: bytes) -> str:
    """A short, non-secret name for a key (its SHA-256, hex, first 16 characters)."""
    return hashlib.sha256(key).hexdigest()[:16]


# -- transports ------------------------------------------------------------------------------


class _Datagrams(DatagramProtocol):
    noisy = False

    def __init__(self, service: SwimMembership) -> None:
        self.service = service

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        self.service.packet_received(datagram, (addr[0], addr[1]))


class _StreamServer(Int32StringReceiver):
    """One push-pull served: a frame in, a frame out, then close (or close at the timeout)."""

    MAX_LENGTH = MAX_STREAM_FRAME

    def __init__(self, service: SwimMembership) -> None:
        self.service = service
        self._timeout: IDelayedCall | None = None

    def connectionMade(self) -> None:
        self.service.streams.add(self)
        self._timeout = self.service.clock.callLater(
            self.service.swim_config.tcp_timeout, self.transport.abortConnection
        )

    answered = False

    def stringReceived(self, data: bytes) -> None:
        # One exchange per connection: frames after the first (still in the receive buffer
        # after loseConnection) are ignored, or one connection could make us build and
        # buffer the whole member table over and over.
        if self.answered:
            return
        self.answered = True
        peer = self.transport.getPeer()
        reply = self.service.stream_received(data, (getattr(peer, "host", ""), getattr(peer, "port", 0)))
        if reply is not None:
            self.sendString(reply)
        self.transport.loseConnection()

    def lengthLimitExceeded(self, length: int) -> None:
        log.info("gossip stream frame of {length} bytes refused (limit {limit})", length=length, limit=self.MAX_LENGTH)
        self.service.stats["stream_frames_refused"] += 1
        self.transport.abortConnection()

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.service.streams.discard(self)
        if self._timeout is not None and self._timeout.active():
            self._timeout.cancel()


class _StreamClient(Int32StringReceiver):
    """One push-pull we started: send our frame, read the reply, report either way exactly once."""

    MAX_LENGTH = MAX_STREAM_FRAME

    def __init__(self, service: SwimMembership, addr: Address, data: bytes) -> None:
        self.service = service
        self.addr = addr
        self.data = data
        self.done = False
        self.deadline: IDelayedCall | None = None  # the whole exchange, connecting included

    def connectionMade(self) -> None:
        self.service.streams.add(self)
        self.sendString(self.data)

    def stringReceived(self, reply: bytes) -> None:
        if not self.done:
            self._finish()
            self.service.stream_answered(self.addr, reply)
        self.transport.loseConnection()

    def lengthLimitExceeded(self, length: int) -> None:
        self.service.stats["stream_frames_refused"] += 1
        self.transport.abortConnection()

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.service.streams.discard(self)
        self.fail()

    def timed_out(self) -> None:
        self.deadline = None
        if self.transport is not None:
            self.transport.abortConnection()  # connectionLost reports the failure
        else:
            self.fail()

    def fail(self) -> None:
        if not self.done:
            self._finish()
            self.service.stream_failed(self.addr)

    def _finish(self) -> None:
        self.done = True
        if self.deadline is not None and self.deadline.active():
            self.deadline.cancel()
        self.deadline = None


class _Factory(Factory):
    noisy = False  # a push-pull every few seconds: no "Starting factory" lines for each

    def __init__(self, build: Any) -> None:
        self._build = build

    def buildProtocol(self, addr: Any) -> Any:
        return self._build()


# -- the service -----------------------------------------------------------------------------


class SwimMembership(Service):
    """SWIM gossip as the node's membership source (``--discovery swim``)."""

    name = "membership"
    PACKET_BUCKETS = PACKET_BUCKETS

    def __init__(
        self,
        view: MembershipView,
        network: INetwork,
        clock: IReactorTime,
        rng: random.Random,
        swim_config: SwimConfig,
        bind: str,
        advertise: str,
        port: int,
        seeds: Sequence[Address],
        meta: bytes,
        keys: Sequence[bytes] = (),
        keyring_path: str | None = None,
    ) -> None:
        self.view = view
        self.network = network
        self.clock = clock
        self.swim_config = swim_config
        self.bind = bind
        self.port = port
        self.seeds = list(seeds)
        self.keyring_path = keyring_path
        self.stats: Counter[str] = Counter()
        self.packet_sizes: dict[str, list[int]] = {
            "sent": [0] * len(PACKET_BUCKETS),
            "received": [0] * len(PACKET_BUCKETS),
        }
        self.packet_size_sums: Counter[str] = Counter()
        saved = read_keyring_file(keyring_path) if keyring_path else None
        if saved is not None:
            if keys and saved[0] != keys[0]:
                log.warn(
                    "using the gossip key ring saved in {path}, not --gossip-keys: it was changed at run time",
                    path=keyring_path,
                )
            keys = saved
        self.keyring = Keyring(keys) if keys else None
        self.core = Swim(
            swim_config, NodeInfo(view.local_id, (advertise, port), meta), rng, self.keyring, on_change=self._changed
        )
        self._udp: IListeningPort | None = None
        self._tcp: IListeningPort | None = None
        self._timer: IDelayedCall | None = None
        self._connecting: set[Deferred] = set()
        self.streams: set[Any] = set()  # push-pull connections open now, either direction

    # -- life cycle --------------------------------------------------------------------------

    def startService(self) -> None:
        try:
            self._udp = self.network.listen_udp(self.bind, self.port, _Datagrams(self))
            self._tcp = self.network.listen(self.bind, self.port, _Factory(lambda: _StreamServer(self)))
        except CannotListenError as e:
            if self._udp is not None:
                self._udp.stopListening()
                self._udp = None
            raise SystemExit(
                f"dhashmap: cannot start: cannot listen on {self.bind}:{self.port} (gossip): {e.socketError}"
            ) from None
        super().startService()
        log.info(
            "gossip on {bind}:{port} (UDP and TCP), {encryption}; joining through {seeds}",
            bind=self.bind,
            port=self.port,
            encryption="encrypted" if self.keyring else "not encrypted",
            seeds=",".join(f"{h}:{p}" for h, p in self.seeds) or "no seeds",
        )
        self._carry(self.core.start(self.clock.seconds(), self.seeds))

    def stopService(self) -> Deferred | None:
        """Leave gracefully: tell a few members (so nobody waits for a suspicion), then close."""
        super().stopService()
        if self._udp is not None:
            self._carry(self.core.leave(self.clock.seconds()))
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self._close_streams()
        ports = [p for p in (self._udp, self._tcp) if p is not None]
        self._udp = self._tcp = None
        stopped = [d for d in (p.stopListening() for p in ports) if d is not None]
        return gatherResults(stopped, consumeErrors=True) if stopped else None

    def _close_streams(self) -> None:
        for d in list(self._connecting):
            d.cancel()
        for stream in list(self.streams):
            if stream.transport is not None:
                stream.transport.abortConnection()

    def leave(self) -> None:
        """Announce a graceful leave now, while the node still serves (a drain's last step)."""
        if self._udp is not None:
            self._carry(self.core.leave(self.clock.seconds()))

    def halt(self) -> None:
        """Stop as a killed process would: no leave, no more timers (the simulator's crash)."""
        self._close_streams()
        self._udp = self._tcp = None
        Service.stopService(self)
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def introduce(self, hello: Any, host: str) -> None:
        """A native-protocol Hello: SWIM alone decides membership, so it is not news here."""

    # -- inputs ------------------------------------------------------------------------------

    def packet_received(self, data: bytes, src: Address) -> None:
        self._count_size("received", len(data))
        self._carry(self.core.receive_packet(self.clock.seconds(), src, data))

    def stream_received(self, data: bytes, src: Address) -> bytes | None:
        reply, outputs = self.core.handle_stream(self.clock.seconds(), src, data)
        self._carry(outputs)
        return reply

    def stream_answered(self, addr: Address, reply: bytes) -> None:
        self._carry(self.core.stream_reply(self.clock.seconds(), addr, reply))

    def stream_failed(self, addr: Address) -> None:
        self._carry(self.core.stream_failed(self.clock.seconds(), addr))

    def _tick(self) -> None:
        self._timer = None
        self._carry(self.core.advance(self.clock.seconds()))

    # -- outputs -----------------------------------------------------------------------------

    def _carry(self, outputs: Iterable[Output]) -> None:
        try:
            for out in outputs:
                if isinstance(out, SendPacket):
                    self._send(out)
                elif isinstance(out, OpenStream):
                    self._open(out)
        finally:
            self._arm()  # whatever happened, the protocol's clock keeps running

    def _send(self, out: SendPacket) -> None:
        if self._udp is None:
            return
        self._count_size("sent", len(out.data))
        try:
            self._udp.write(out.data, out.addr)  # type: ignore[attr-defined]
        except Exception as e:  # unreachable, a bad or wrong-family address from gossip, too big: drop it
            self.stats["send_errors"] += 1
            log.debug("gossip to {addr} not sent: {e}", addr=out.addr, e=e)

    def _open(self, out: OpenStream) -> None:
        if not self.running:
            return
        client = _StreamClient(self, out.addr, out.data)
        timeout = self.swim_config.tcp_timeout
        client.deadline = self.clock.callLater(timeout, client.timed_out)
        d = self.network.connect(out.addr[0], out.addr[1], _Factory(lambda: client), timeout=timeout)
        self._connecting.add(d)

        def connected(protocol: Any) -> None:
            self._connecting.discard(d)

        def failed(failure: Failure) -> None:
            self._connecting.discard(d)
            log.debug("gossip stream to {addr} failed: {e}", addr=out.addr, e=failure.getErrorMessage())
            client.fail()

        d.addCallbacks(connected, failed)

    def _arm(self) -> None:
        deadline = self.core.next_deadline()
        if deadline is None or not self.running:
            if self._timer is not None and self._timer.active():
                self._timer.cancel()
            self._timer = None
            return
        delay = max(0.0, deadline - self.clock.seconds())
        if self._timer is not None and self._timer.active():
            if self._timer.getTime() == deadline:
                return
            self._timer.reset(delay)
        else:
            self._timer = self.clock.callLater(delay, self._tick)

    def _count_size(self, direction: str, size: int) -> None:
        counts = self.packet_sizes[direction]
        for i, bound in enumerate(PACKET_BUCKETS):
            if size <= bound:
                counts[i] += 1
                break
        self.packet_size_sums[direction] += size

    # -- the member view ---------------------------------------------------------------------

    def _changed(self, new: MemberView, old: MemberView | None) -> None:
        if not NODE_ID.match(new.name):
            self.stats["bad_names"] += 1
            log.warn("gossip member {name!r} left out of the view: not a node id", name=new.name)
            return
        try:
            meta = decode_meta(new.meta)
        except ValueError as e:
            if self.view.get(new.name) is not None and new.state in (DEAD, LEFT):
                self.view.set_state(new.name, new.state)  # what we know of it still must not route to it
            self.stats["bad_metadata"] += 1
            log.warn("member {name} at {addr} left out of the view: {e}", name=new.name, addr=new.addr, e=e)
            return
        state = new.state
        member = Member(
            id=new.name,
            host=new.addr[0],
            peer_port=meta["peer"],
            rest_port=meta["rest"],
            state=state,
            weight=meta["weight"],
            software_version=meta["version"],
            incarnation=new.incarnation,
            gossip_port=new.addr[1],
        )
        known = self.view.get(new.name)
        self.view.upsert(member, source_incarnation=True)
        if new.name != self.view.local_id and (known is None or known.state != state):
            how = {SUSPECT: log.info, DEAD: log.warn, LEFT: log.info}.get(state, log.info)
            how(
                "member {id} is {state} (incarnation {inc}, gossip {host}:{port})",
                id=new.name,
                state=state,
                inc=new.incarnation,
                host=new.addr[0],
                port=new.addr[1],
            )

    # -- key ring ----------------------------------------------------------------------------

    def keys(self) -> dict[str, Any]:
        """The installed keys by fingerprint (never the keys themselves)."""
        if self.keyring is None:
            return {"encrypted": False, "primary": None, "keys": []}
        return {
            "encrypted": True,
            "primary": fingerprint(self.keyring.primary),
            "keys": [fingerprint(k) for k in self.keyring.keys],
        }

    def change_keys(self, action: str, key: bytes) -> dict[str, Any]:
        """``install``, ``use`` (make primary) or ``remove`` a key; saved for the next start.

        The change is tried on a copy and saved first, then applied: a node never runs with a
        key ring that its next start would not have.
        """
        if self.keyring is None:
            raise GossipError("gossip is not encrypted on this node: start it with --gossip-keys to use a key ring")
        if action not in ("install", "use", "remove"):
            raise GossipError(f"unknown key ring action {action!r}: install, use or remove")
        trial = Keyring(self.keyring.keys)
        try:
            getattr(trial, action)(key)
        except (ValueError, KeyError) as e:
            raise GossipError(str(e).strip("'\"")) from None
        if self.keyring_path is not None:
            try:
                write_keyring_file(self.keyring_path, trial.keys)
            except OSError as e:
                raise KeyringNotSaved(f"cannot save the key ring to {self.keyring_path}: {e.strerror}; "
                                  "nothing was changed") from None
        getattr(self.keyring, action)(key)
        log.info("gossip key ring: {action} {fp}", action=action, fp=fingerprint(key))
        return self.keys()
