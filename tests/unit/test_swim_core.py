"""The SWIM + Lifeguard state machine, driven directly (one core, hand-made packets)
and as small clusters on the in-memory network of swim_harness."""

from __future__ import annotations

import math
import random

import pytest

from tests.unit.swim_harness import Net, addr_of, cluster
from twisted_dhm.membership.swim import Keyring, NodeInfo, OpenStream, SendPacket, Swim, SwimConfig, codec
from twisted_dhm.membership.swim.broadcasts import BroadcastQueue
from twisted_dhm.membership.swim.suspicion import Suspicion, suspicion_timeout
from twisted_dhm.membership.view import ALIVE, DEAD, LEFT, SUSPECT

ME = ("10.0.0.1", 7946)
OUTSIDE = ("10.9.9.9", 7946)


def member_addr(i: int) -> tuple[str, int]:
    return (f"10.0.1.{i}", 7946)


def packet(*entries: bytes, keyring: Keyring | None = None) -> bytes:
    return codec.seal(b"".join(entries), keyring, codec.PACKET_LABEL)


def msgs_of(data: bytes, keyring: Keyring | None = None) -> list[tuple[str, object]]:
    pkt = codec.parse_packet(codec.open_frame(data, keyring, codec.PACKET_LABEL))
    return [(m.WhichOneof("body"), getattr(m, m.WhichOneof("body"))) for m in pkt.messages]


def lone(n_members: int = 4, config: SwimConfig | None = None, seed: int = 1) -> Swim:
    """Node "me" that knows members m0..m{n-1} (all alive, incarnation 1) and has not started."""
    swim = Swim(config or SwimConfig(), NodeInfo("me", ME, b""), random.Random(seed))
    body = [codec.alive(1, f"m{i}", *member_addr(i), b"") for i in range(n_members)]
    swim.receive_packet(0.0, OUTSIDE, packet(*body))
    return swim


def state(swim: Swim, name: str) -> tuple[str, int] | None:
    for m in swim.members():
        if m.name == name:
            return m.state, m.incarnation
    return None


def drive(swim: Swim, until: float, respond=lambda now, addr, msgs: []) -> list:
    """Run ``swim``'s timers up to ``until``; ``respond`` returns packets that come straight back
    from the addressee.  Returns every packet sent as (time, addr, decoded messages)."""
    sent = []
    while (d := swim.next_deadline()) is not None and d <= until:
        pending = list(swim.advance(d))
        while pending:
            out = pending.pop(0)
            if isinstance(out, SendPacket):
                msgs = msgs_of(out.data)
                sent.append((d, out.addr, msgs))
                for reply in respond(d, out.addr, msgs):
                    pending.extend(swim.receive_packet(d, out.addr, reply))
    return sent


def kinds(msgs) -> list[str]:
    return [k for k, _ in msgs]


def seqs(msgs, kind: str) -> list[int]:
    return [m.seq for k, m in msgs if k == kind]


# --- probing --------------------------------------------------------------------------


def test_probes_succeed_in_a_healthy_cluster():
    net = cluster(4, settle=30.0)
    for i in range(1, 5):
        swim = net.node(i)
        assert net.view(i) == {f"node{j}": ALIVE for j in range(1, 5)}
        assert swim.stats["probes"] >= 25
        assert swim.stats["probe_failures"] == 0
        assert swim.stats["suspicions"] == 0
        assert swim.health_score == 0


def test_randomised_round_robin_probes_everyone_once_per_pass():
    swim = lone(6)
    swim.start(0.0, [])
    sent = drive(swim, 30.0, respond=lambda now, addr, msgs: [packet(codec.ack(m.seq)) for k, m in msgs if k == "ping"])
    targets = [m.target for _, _, msgs in sent for k, m in msgs if k == "ping"]
    assert len(targets) >= 24
    for start in range(0, 24, 6):
        assert sorted(targets[start : start + 6]) == [f"m{i}" for i in range(6)]
    assert targets[:6] != targets[6:12] or targets[6:12] != targets[12:18]  # reshuffled per pass


def test_indirect_probe_through_ping_req_keeps_member_alive():
    net = cluster(4, settle=10.0)
    net.cut(1, 2)  # node1 and node2 cannot talk directly; the others relay
    net.run_until(60.0)
    n1 = net.node(1)
    assert n1.stats["indirect_probes"] > 0
    assert n1.stats["probe_failures"] == 0
    assert sum(net.node(i).stats["ping_reqs_received"] for i in (3, 4)) > 0
    assert not [c for c in net.changes if c[0] > 10.0 and c[3] != ALIVE]
    assert net.view(1)["node2"] == ALIVE and net.view(2)["node1"] == ALIVE


def test_helper_relays_ack_and_sends_no_nack():
    swim = lone(2)
    req = codec.indirect_ping(77, "m0", *member_addr(0), True, 500, "m1")
    outs = swim.receive_packet(5.0, member_addr(1), packet(req))
    (ping_out,) = outs
    assert ping_out.addr == member_addr(0)
    ((kind, ping),) = msgs_of(ping_out.data)[:1]
    assert kind == "ping" and ping.target == "m0"
    (ack_out,) = swim.receive_packet(5.1, member_addr(0), packet(codec.ack(ping.seq)))
    assert ack_out.addr == member_addr(1)
    assert seqs(msgs_of(ack_out.data), "ack") == [77]
    assert swim.advance(10.0) == []
    assert swim.stats["nacks_sent"] == 0


def test_helper_nacks_at_80_percent_of_the_requesters_timeout():
    swim = lone(2)
    req = codec.indirect_ping(77, "m0", *member_addr(0), True, 2000, "m1")
    swim.receive_packet(5.0, member_addr(1), packet(req))
    assert swim.next_deadline() == pytest.approx(5.0 + 1.6)
    assert swim.advance(6.59) == []
    (nack_out,) = swim.advance(6.6)
    assert nack_out.addr == member_addr(1)
    assert seqs(msgs_of(nack_out.data), "nack") == [77]
    # The relay expires at the full timeout: a later ack is not relayed.
    swim.advance(7.0)
    assert swim.receive_packet(7.5, member_addr(0), packet(codec.ack(swim._seq))) == []


def test_helper_without_nack_flag_stays_silent():
    swim = lone(2)
    swim.receive_packet(5.0, member_addr(1), packet(codec.indirect_ping(77, "m0", *member_addr(0), False, 500, "m1")))
    assert swim.advance(100.0) == []


def test_misdirected_ping_is_not_answered():
    swim = lone(1)
    assert swim.receive_packet(1.0, OUTSIDE, packet(codec.ping(1, "someone-else", "x", *OUTSIDE))) == []
    assert swim.stats["misdirected_pings"] == 1
    (out,) = swim.receive_packet(1.0, OUTSIDE, packet(codec.ping(2, "me", "x", *OUTSIDE)))
    assert out.addr == OUTSIDE and seqs(msgs_of(out.data), "ack") == [2]


# --- awareness, nacks, lifeguard off ---------------------------------------------------


def _ping_times(sent):
    return [t for t, _, msgs in sent if "ping" in kinds(msgs)]


def test_awareness_rises_on_missing_nacks_holds_with_nacks_and_falls_on_acks():
    swim = lone(4)
    swim.start(0.0, [])
    # Phase 1: nobody answers. The first probe fails with 3 helpers silent: +3.
    sent = drive(swim, 1.0)
    p1 = _ping_times(sent)[0]
    sent += drive(swim, p1 + 1.0)
    reqs = [(t, m) for t, _, msgs in sent for k, m in msgs if k == "indirect_ping"]
    assert len(reqs) == 3 and all(m.nack for _, m in reqs)
    assert reqs[0][0] == pytest.approx(p1 + 0.5)
    assert _ping_times(sent) == [p1, p1 + 1.0]
    assert swim.health_score == 3

    # Phase 2: helpers nack (they are fine, the target is not): no change.
    def nack_back(now, addr, msgs):
        return [packet(codec.nack(m.seq)) for k, m in msgs if k == "indirect_ping"]

    sent = drive(swim, p1 + 5.0 - 1e-9, respond=nack_back)
    # The probe timeout is scaled by health + 1 = 4 too: ping-req 2 s after the ping.
    assert [t for t, _, msgs in sent if "indirect_ping" in kinds(msgs)][0] == pytest.approx(p1 + 1.0 + 2.0)
    assert swim.stats["nacks_received"] >= 2

    # Phase 3: every ping is acked: -1 per probe, down to 0; the interval shrinks with it.
    health_at_ping = []

    def ack_back(now, addr, msgs):
        if "ping" in kinds(msgs):
            health_at_ping.append(swim.health_score)
        return [packet(codec.ack(m.seq)) for k, m in msgs if k == "ping"] + nack_back(now, addr, msgs)

    sent = drive(swim, 40.0, respond=ack_back)
    pings = _ping_times(sent)
    assert pings[0] == pytest.approx(p1 + 5.0)  # probe 2 lasted 4 s and ended with all nacks: still 3
    assert health_at_ping[:5] == [3, 2, 1, 0, 0]
    assert [round(b - a, 6) for a, b in zip(pings, pings[1:], strict=False)][:4] == [4.0, 3.0, 2.0, 1.0]


def test_no_helpers_means_one_point_per_failed_probe():
    swim = lone(1)
    swim.start(0.0, [])
    drive(swim, 2.0)
    assert swim.stats["probe_failures"] == 1
    assert swim.health_score == 1


def test_health_is_capped_below_max_multiplier():
    swim = lone(4, SwimConfig(awareness_max_multiplier=3))
    swim.start(0.0, [])
    drive(swim, 30.0)
    assert swim.health_score == 2


def test_lifeguard_off_is_classic_swim():
    swim = lone(4, SwimConfig(lifeguard=False))
    swim.start(0.0, [])
    swim.receive_packet(0.0, OUTSIDE, packet(codec.suspect(1, "m0", "m1")))
    sent = drive(swim, 12.0)
    assert swim.health_score == 0
    pings = _ping_times(sent)
    assert all(round(b - a, 6) == 1.0 for a, b in zip(pings, pings[1:], strict=False))
    reqs = [m for _, _, msgs in sent for k, m in msgs if k == "indirect_ping"]
    assert reqs and not any(m.nack for m in reqs)
    # No buddy: a ping to a suspect carries no suspect message first.
    assert any(addr == member_addr(0) for _, addr, msgs in sent if "ping" in kinds(msgs))
    for _, _addr, msgs in sent:
        if "ping" in kinds(msgs):
            assert kinds(msgs)[0] == "ping"


# --- suspicion timing -------------------------------------------------------------------


def test_suspicion_timeout_formula():
    assert suspicion_timeout(4, 1, 1.0) == 4.0
    assert suspicion_timeout(4, 10, 1.0) == 4.0
    assert suspicion_timeout(4, 1000, 1.0) == pytest.approx(12.0)
    assert suspicion_timeout(4, 100, 0.5) == pytest.approx(4.0)
    s = Suspicion("a", 3, 2.0, 12.0, 0.0)
    assert s.deadline() == 12.0
    assert s.confirm("a") is False  # the accuser is not a confirmation
    assert s.confirm("b") and s.deadline() == pytest.approx(12.0 - 10.0 * math.log(2) / math.log(4))
    assert s.confirm("b") is False
    assert s.confirm("c") and s.confirm("d") and s.deadline() == 2.0
    assert s.confirm("e") is False  # k reached


def test_suspect_becomes_dead_exactly_at_the_computed_timeout():
    swim = lone(4)  # five live members: min = 4 * max(1, log10 5) * 1 s = 4 s, max = 6 * min
    swim.receive_packet(10.0, OUTSIDE, packet(codec.suspect(1, "m0", "m1")))
    assert state(swim, "m0") == (SUSPECT, 1)
    assert swim.stats["suspicions"] == 1
    assert swim.next_deadline() == pytest.approx(10.0 + 24.0)
    swim.advance(33.999)
    assert state(swim, "m0") == (SUSPECT, 1)
    swim.advance(34.0)
    assert state(swim, "m0") == (DEAD, 1)
    assert swim.stats["dead_declared"] == 1


def test_independent_confirmations_shrink_the_timeout():
    swim = lone(4)
    swim.receive_packet(10.0, OUTSIDE, packet(codec.suspect(1, "m0", "m1")))
    swim.receive_packet(11.0, OUTSIDE, packet(codec.suspect(1, "m0", "m2")))
    assert swim.next_deadline() == pytest.approx(10.0 + 24.0 - 20.0 * math.log(2) / math.log(3))
    swim.receive_packet(11.5, OUTSIDE, packet(codec.suspect(1, "m0", "m2")))  # same accuser again
    swim.receive_packet(11.5, OUTSIDE, packet(codec.suspect(1, "m0", "m1")))  # the original accuser
    assert swim.next_deadline() == pytest.approx(10.0 + 24.0 - 20.0 * math.log(2) / math.log(3))
    swim.receive_packet(12.0, OUTSIDE, packet(codec.suspect(1, "m0", "m3")))
    assert swim.next_deadline() == pytest.approx(14.0)
    swim.advance(13.99)
    assert state(swim, "m0")[0] == SUSPECT
    swim.advance(14.0)
    assert state(swim, "m0")[0] == DEAD


def test_confirmation_past_the_new_deadline_kills_at_once():
    swim = lone(4)
    swim.receive_packet(10.0, OUTSIDE, packet(codec.suspect(1, "m0", "m1")))
    swim.receive_packet(15.0, OUTSIDE, packet(codec.suspect(1, "m0", "m2")))
    swim.receive_packet(20.0, OUTSIDE, packet(codec.suspect(1, "m0", "m3")))
    assert state(swim, "m0")[0] == DEAD


def test_without_lifeguard_the_timeout_is_the_minimum_and_confirmations_do_nothing():
    swim = lone(4, SwimConfig(lifeguard=False))
    swim.receive_packet(10.0, OUTSIDE, packet(codec.suspect(1, "m0", "m1")))
    assert swim.next_deadline() == pytest.approx(14.0)
    swim.receive_packet(11.0, OUTSIDE, packet(codec.suspect(1, "m0", "m2")))
    swim.receive_packet(11.0, OUTSIDE, packet(codec.suspect(1, "m0", "m3")))
    assert swim.next_deadline() == pytest.approx(14.0)
    swim.advance(14.0)
    assert state(swim, "m0")[0] == DEAD


def test_too_few_members_for_confirmations_use_the_minimum():
    swim = lone(2)  # three live: n - 2 = 1 < k = 2
    swim.receive_packet(10.0, OUTSIDE, packet(codec.suspect(1, "m0", "m1")))
    assert swim.next_deadline() == pytest.approx(14.0)


def test_crashed_member_is_suspected_then_declared_dead_by_everyone():
    net = cluster(5, settle=10.0)
    net.stop(5)
    net.run_until(60.0)
    for i in range(1, 5):
        assert net.view(i)["node5"] == DEAD
        assert net.node(i).health_score == 0  # helpers nacked: nobody blamed itself
    suspected = [c for c in net.changes if c[2] == "node5" and c[3] == SUSPECT]
    dead = [c for c in net.changes if c[2] == "node5" and c[3] == DEAD]
    assert suspected and dead and min(d[0] for d in dead) > min(s[0] for s in suspected)
    assert sum(net.node(i).stats["nacks_sent"] for i in range(1, 5)) > 0


# --- refutation and the buddy system ----------------------------------------------------


def test_refuting_suspicion_and_death_of_self():
    swim = lone(2)
    swim.receive_packet(1.0, OUTSIDE, packet(codec.suspect(5, "me", "m0")))
    assert state(swim, "me") == (ALIVE, 6)
    assert swim.stats["refutations"] == 1
    assert swim.health_score == 1
    swim.receive_packet(2.0, OUTSIDE, packet(codec.dead(9, "me", "m0")))
    assert state(swim, "me") == (ALIVE, 10)
    swim.receive_packet(2.0, OUTSIDE, packet(codec.suspect(3, "me", "m0")))  # old news: ignored
    assert state(swim, "me") == (ALIVE, 10)
    # The refutation is what we gossip next.
    (out,) = swim.receive_packet(3.0, OUTSIDE, packet(codec.ping(1, "me", "m0", *OUTSIDE)))
    alives = [m for k, m in msgs_of(out.data) if k == "alive" and m.name == "me"]
    assert alives and alives[0].incarnation == 10


def test_alive_about_self_with_other_meta_is_refuted():
    swim = lone(1)
    swim.receive_packet(1.0, OUTSIDE, packet(codec.alive(1, "me", *ME, b"old life")))
    assert state(swim, "me") == (ALIVE, 2)
    swim.receive_packet(1.0, OUTSIDE, packet(codec.alive(2, "me", *ME, b"")))  # matches us: nothing to do
    assert state(swim, "me") == (ALIVE, 2)


def test_suspected_member_refutes_and_the_cluster_sees_the_higher_incarnation():
    net = cluster(4, settle=10.0)
    n2 = net.node(2)
    before = n2.incarnation
    net.emit(addr_of(1), net.node(1).receive_packet(net.now, OUTSIDE, packet(codec.suspect(before, "node2", "x"))))
    assert net.view(1)["node2"] == SUSPECT
    net.run_until(15.0)
    assert n2.incarnation > before
    assert n2.stats["refutations"] == 1
    for i in (1, 3, 4):
        view = {m.name: (m.state, m.incarnation) for m in net.node(i).members()}
        assert view["node2"] == (ALIVE, n2.incarnation)


def test_buddy_system_puts_the_suspicion_before_the_ping():
    swim = lone(3)
    swim.receive_packet(0.0, OUTSIDE, packet(codec.suspect(1, "m0", "m1")))
    swim.start(0.0, [])
    sent = drive(swim, 5.0)
    to_m0 = [msgs for _, addr, msgs in sent if addr == member_addr(0) and "ping" in kinds(msgs)]
    assert to_m0
    first_kind, first = to_m0[0][0]
    assert first_kind == "suspect" and first.name == "m0" and first.from_node == "me"
    assert kinds(to_m0[0])[1] == "ping"
    for _, addr, msgs in sent:  # others get a plain ping first, or the buddy suspicion about themselves
        if addr != member_addr(0) and "ping" in kinds(msgs):
            first_kind, first = msgs[0]
            ping = next(m for k, m in msgs if k == "ping")
            assert first_kind == "ping" or (first_kind == "suspect" and first.name == ping.target)


def test_a_new_suspect_is_probed_next():
    swim = lone(20)
    swim.start(0.0, [])

    def ack(now, addr, msgs):  # everyone answers: no suspicion of our own
        return [packet(codec.ack(m.seq)) for k, m in msgs if k == "ping"]

    drive(swim, 3.0, ack)
    swim.receive_packet(3.0, OUTSIDE, packet(codec.suspect(1, "m7", "m1")))
    sent = drive(swim, 4.05, ack)
    pinged = [addr for _, addr, msgs in sent if "ping" in kinds(msgs)]
    assert pinged and pinged[0] == member_addr(7), "the suspect is the very next member probed"


def test_a_suspect_already_probed_this_round_is_probed_again_and_no_one_is_skipped():
    """Moving a suspect that was probed earlier in the round to the front must not skip the member
    that was next: every member is still probed in the round (the suspect twice)."""
    swim = lone(20)
    swim.start(0.0, [])

    def ack(now, addr, msgs):
        return [packet(codec.ack(m.seq)) for k, m in msgs if k == "ping"]

    def pings(sent):
        return [addr for _, addr, msgs in sent if "ping" in kinds(msgs)]

    before = pings(drive(swim, 6.0, ack))
    assert 4 <= len(before) < 20
    suspect = before[1]  # probed already in this round
    swim.receive_packet(6.0, OUTSIDE, packet(codec.suspect(1, f"m{suspect[0].rsplit('.', 1)[1]}", "m1")))
    after = pings(drive(swim, 40.0, ack))
    assert after[0] == suspect, "the suspect is probed next"
    first_round = before + after[: 20 - len(before) + 1]  # 20 members, the suspect twice
    assert set(first_round) == {member_addr(i) for i in range(20)}, "a member was skipped in the round"


def test_suspect_refutes_on_the_ack_itself():
    target = lone(1)
    (out,) = target.receive_packet(
        1.0, OUTSIDE, packet(codec.suspect(1, "me", "m0"), codec.ping(9, "me", "m0", *OUTSIDE))
    )
    got = msgs_of(out.data)
    assert seqs(got, "ack") == [9]
    assert any(k == "alive" and m.name == "me" and m.incarnation == 2 for k, m in got)


def test_a_stale_accusation_gets_our_current_alive_on_the_ack():
    target = lone(1)
    target.receive_packet(1.0, OUTSIDE, packet(codec.suspect(1, "me", "m0")))  # refuted: now incarnation 2
    assert target.incarnation == 2
    # m0 missed the refutation and probes us with its old suspicion (the buddy system).
    (out,) = target.receive_packet(
        2.0, OUTSIDE, packet(codec.suspect(1, "me", "m0"), codec.ping(9, "me", "m0", *OUTSIDE))
    )
    got = msgs_of(out.data)
    assert seqs(got, "ack") == [9]
    assert any(k == "alive" and m.name == "me" and m.incarnation == 2 for k, m in got)
    assert target.incarnation == 2, "no new refutation: the old claim is answered with what we have"
    assert target.stats["restated_alive"] == 1


# --- dissemination ---------------------------------------------------------------------


def test_broadcast_queue_retransmit_limit_and_order():
    q = BroadcastQueue()
    q.put("a", b"A" * 10)
    q.put("b", b"B" * 10)
    assert q.take(100, limit=3) == [b"B" * 10, b"A" * 10]  # newest first
    q.put("c", b"C" * 10)
    assert q.take(15, limit=3) == [b"C" * 10]  # fewest transmitted first, and it fills the room
    assert q.take(100, limit=3) == [b"C" * 10, b"B" * 10, b"A" * 10]
    assert len(q) == 3 and q.transmits("c") == 2 and q.transmits("a") == 2
    assert q.take(100, limit=3) == [b"C" * 10, b"B" * 10, b"A" * 10]  # the third and last time
    assert len(q) == 0 and q.take(100, limit=3) == []


def test_broadcast_queue_newer_news_replaces_older():
    q = BroadcastQueue()
    q.put("a", b"old-news")
    q.take(100, limit=5)
    q.take(100, limit=5)
    q.put("a", b"new-news")
    assert len(q) == 1 and q.transmits("a") == 0
    assert q.take(100, limit=5) == [b"new-news"]


def test_broadcast_queue_skips_what_does_not_fit_and_drops_when_the_cluster_shrinks():
    q = BroadcastQueue()
    q.put("big", b"x" * 50)
    q.put("small", b"y" * 10)
    assert q.take(20, limit=4) == [b"y" * 10]
    for _ in range(3):
        q.take(100, limit=4)
    assert q.transmits("big") == 3
    assert q.take(100, limit=2) == []  # limit fell below what was already sent: done
    assert len(q) == 0


def test_core_transmit_limit_follows_cluster_size():
    swim = lone(8)  # nine live members: 4 * ceil(log10(10)) = 4 transmissions
    assert swim._transmit_limit() == 4
    swim.receive_packet(0.0, OUTSIDE, packet(codec.alive(2, "m0", *member_addr(0), b"new meta")))
    sends = 0
    while swim.queue_depth and sends < 100:
        swim.receive_packet(1.0, OUTSIDE, packet(codec.ping(sends, "me", "x", *OUTSIDE)))
        sends += 1
    # Eight alive entries are queued (m0's newer news replaced its older one); each
    # ack carries all of them, and each goes out exactly 4 times.
    assert sends == 4


def test_mtu_is_never_exceeded_and_packets_are_packed_greedily():
    for keyring in (None, Keyring([b"k" * 32], nonce_source=lambda n: b"\0" * n)):
        swim = Swim(SwimConfig(), NodeInfo("me", ME, b""), random.Random(3), keyring=keyring)
        big = [
            (f"member-with-a-longish-name-{i:04d}", f"10.1.{i // 250}.{i % 250}", 7946, bytes(40), 1, ALIVE)
            for i in range(600)
        ]
        swim.stream_reply(0.0, OUTSIDE, codec.seal(codec.push_pull(False, big), keyring, codec.STREAM_LABEL))
        assert swim.queue_depth == 600
        outs = swim.start(0.0, [])
        for t in (0.5, 1.0, 1.5, 2.0):
            outs += swim.advance(t)
            outs += swim.receive_packet(t, OUTSIDE, packet(codec.ping(1, "me", "x", *OUTSIDE), keyring=keyring))
        packets = [o for o in outs if isinstance(o, SendPacket)]
        assert len(packets) > 20
        assert max(len(p.data) for p in packets) <= 1400
        entry_size = len(codec.alive(1, big[0][0], big[0][1], 7946, bytes(40)))
        # Gossip-only packets leave less room than one more entry.
        gossip = [
            p
            for p in packets
            if "ping" not in kinds(msgs_of(p.data, keyring)) and "ack" not in kinds(msgs_of(p.data, keyring))
        ]
        assert gossip and all(len(p.data) > 1400 - entry_size - 2 for p in gossip[:10])


def test_largest_messages_still_fit_the_mtu():
    swim = lone(0)
    name = "n" * 128
    swim.receive_packet(0.0, OUTSIDE, packet(codec.alive(1, name, "h" * 255, 65535, b"m" * 512)))
    swim.receive_packet(0.0, OUTSIDE, packet(codec.suspect(1, name, "x" * 128)))
    swim.start(0.0, [])
    outs = []
    for t in range(1, 20):
        outs += swim.advance(float(t))
    assert outs and all(len(o.data) <= 1400 for o in outs if isinstance(o, SendPacket))


# --- joining, leaving, dead members ------------------------------------------------------


def test_five_nodes_join_through_one_seed():
    net = Net()
    for i in range(1, 6):
        net.add(i)
    net.start(1, [])
    for i in range(2, 6):
        net.start(i, [1])
    net.run_until(5.0)
    for i in range(1, 6):
        assert net.view(i) == {f"node{j}": ALIVE for j in range(1, 6)}
    assert net.node(1).stats["push_pulls"] >= 4


def test_join_retries_a_seed_that_was_not_up_yet():
    net = Net()
    net.add(1)
    net.add(2, config=SwimConfig(rejoin_interval=5.0))
    net.start(2, [1])  # node1 not started: it answers streams but knows only itself
    net.stop(1)
    net.run_until(1.0)
    assert net.node(2).stats["stream_failures"] == 1
    net.down.clear()
    net.start(1, [])
    net.run_until(20.0)
    assert net.view(2) == {"node1": ALIVE, "node2": ALIVE}
    assert net.node(2).stats["rejoin_attempts"] >= 1


def test_a_failed_join_is_retried_with_backoff_not_only_at_the_rejoin_interval():
    net = Net()
    net.add(1)
    net.add(2)  # rejoin_interval 30 s: without the backoff the join would wait 15-45 s
    net.start(2, [1])
    net.stop(1)
    net.run_until(8.0)  # retries at about 1, 2 and 4 s later, all failing
    failures = net.node(2).stats["stream_failures"]
    assert 3 <= failures <= 5, failures
    net.down.clear()
    net.start(1, [])
    net.run_until(8.0 + 12.0)  # the next retry is at most 8 s (x 1.25) away
    assert net.view(2) == {"node1": ALIVE, "node2": ALIVE}


def test_leave_is_seen_as_left_not_dead():
    net = cluster(5, settle=10.0)
    t_leave = net.now
    leaver = net.node(5)
    net.emit(addr_of(5), leaver.leave(net.now))
    assert leaver.next_deadline() is None
    assert leaver.advance(100.0) == []
    net.run_until(20.0)
    net.stop(5)
    net.run_until(60.0)
    for i in range(1, 5):
        assert net.view(i)["node5"] == LEFT
    after = [c for c in net.changes if c[2] == "node5" and c[0] >= t_leave and c[1] != "node5"]
    assert after and {c[3] for c in after} == {LEFT}


def test_stale_alive_cannot_resurrect_a_dead_member():
    swim = lone(3)
    swim.receive_packet(1.0, OUTSIDE, packet(codec.dead(3, "m0", "m1")))
    assert state(swim, "m0") == (DEAD, 3)
    swim.receive_packet(2.0, OUTSIDE, packet(codec.alive(1, "m0", *member_addr(0), b"")))
    swim.receive_packet(2.0, OUTSIDE, packet(codec.alive(3, "m0", *member_addr(0), b"")))
    assert state(swim, "m0") == (DEAD, 3)
    # A push-pull from a node that missed the death is no better.
    pp = codec.push_pull(False, [("m0", *member_addr(0), b"", 3, ALIVE)])
    swim.stream_reply(3.0, OUTSIDE, codec.seal(pp, None, codec.STREAM_LABEL))
    assert state(swim, "m0") == (DEAD, 3)
    # A dead member's name is not taken over by another address (dead_node_reclaim_time = 0).
    swim.receive_packet(4.0, OUTSIDE, packet(codec.alive(9, "m0", "10.7.7.7", 7946, b"")))
    assert state(swim, "m0") == (DEAD, 3) and swim.stats["address_conflicts"] == 1
    # Only a higher incarnation from its own address brings it back.
    swim.receive_packet(5.0, OUTSIDE, packet(codec.alive(4, "m0", *member_addr(0), b"")))
    assert state(swim, "m0") == (ALIVE, 4)


def test_left_member_may_come_back_at_a_new_address():
    swim = lone(2)
    swim.receive_packet(1.0, OUTSIDE, packet(codec.dead(2, "m0", "m0")))
    assert state(swim, "m0") == (LEFT, 2)
    swim.receive_packet(2.0, OUTSIDE, packet(codec.alive(1, "m0", "10.7.7.7", 7946, b"")))
    assert state(swim, "m0") == (ALIVE, 1)
    assert [m.addr for m in swim.members() if m.name == "m0"] == [("10.7.7.7", 7946)]


def test_dead_members_are_forgotten_after_remember_dead_for():
    swim = lone(3, SwimConfig(remember_dead_for=60.0))
    swim.start(0.0, [])
    swim.receive_packet(1.0, OUTSIDE, packet(codec.dead(1, "m0", "m1")))
    drive(swim, 30.0, respond=lambda now, addr, msgs: [packet(codec.ack(m.seq)) for k, m in msgs if k == "ping"])
    assert state(swim, "m0") == (DEAD, 1)
    drive(swim, 70.0, respond=lambda now, addr, msgs: [packet(codec.ack(m.seq)) for k, m in msgs if k == "ping"])
    assert state(swim, "m0") is None


def test_partition_then_heal_merges_by_rejoin():
    config = SwimConfig(rejoin_interval=20.0)
    net = cluster(6, config=config, settle=10.0)
    net.partition([1, 2, 3], [4, 5, 6])
    net.run_until(70.0)
    for i in (1, 2, 3):
        assert {n: s for n, s in net.view(i).items() if n in ("node4", "node5", "node6")} == dict.fromkeys(
            ("node4", "node5", "node6"), DEAD
        )
    for i in (4, 5, 6):
        assert all(net.view(i)[n] == DEAD for n in ("node1", "node2", "node3"))
    net.heal()
    net.run_until(70.0 + 1.5 * 20.0 + 10.0)
    for i in range(1, 7):
        assert net.view(i) == {f"node{j}": ALIVE for j in range(1, 7)}
    assert sum(net.node(i).stats["rejoin_attempts"] for i in range(1, 7)) > 0


def test_update_meta_spreads_with_a_higher_incarnation():
    net = cluster(3, settle=5.0)
    n3 = net.node(3)
    net.emit(addr_of(3), n3.update_meta(net.now, b"zone=b"))
    net.run_until(10.0)
    for i in (1, 2):
        (m,) = [m for m in net.node(i).members() if m.name == "node3"]
        assert (m.meta, m.incarnation) == (b"zone=b", n3.incarnation)
    with pytest.raises(ValueError):
        n3.update_meta(net.now, b"x" * 513)


def test_on_change_reports_new_members_and_transitions():
    seen = []
    swim = Swim(
        SwimConfig(), NodeInfo("me", ME, b""), random.Random(1), on_change=lambda new, old: seen.append((new, old))
    )
    swim.start(0.0, [])
    swim.receive_packet(1.0, OUTSIDE, packet(codec.alive(1, "m0", *member_addr(0), b"")))
    swim.receive_packet(2.0, OUTSIDE, packet(codec.dead(1, "m0", "x")))
    assert [(n.name, n.state, o and o.state) for n, o in seen] == [
        ("me", ALIVE, None),
        ("m0", ALIVE, None),
        ("m0", DEAD, ALIVE),
    ]


# --- encryption end to end ----------------------------------------------------------------

K1, K2, K3 = b"1" * 16, b"2" * 32, b"3" * 24


def _keyed_cluster(n: int) -> tuple[Net, dict[int, Keyring]]:
    net = Net()
    rings = {}
    for i in range(1, n + 1):
        rings[i] = Keyring([K1], nonce_source=random.Random(100 + i).randbytes)
        net.add(i, keyring=rings[i])
    for i in range(1, n + 1):
        net.start(i, [1] if i != 1 else [])
    net.run_until(10.0)
    return net, rings


def test_key_rotation_loses_no_packets():
    net, rings = _keyed_cluster(4)
    assert all(net.view(i) == {f"node{j}": ALIVE for j in range(1, 5)} for i in range(1, 5))
    for ring in rings.values():
        ring.install(K2)
    net.run_until(15.0)
    rings[1].use(K2)  # node1 writes with K2, everyone still reads both
    net.run_until(25.0)
    sent_by_1 = [
        data for t, name, kind, (addr, data) in net.log if name == "node1" and kind == "SendPacket" and t > 15.5
    ]
    assert sent_by_1 and all(msgs_of(d, Keyring([K2])) is not None for d in sent_by_1[:5])
    for ring in rings.values():
        ring.use(K2)
    net.run_until(35.0)
    for ring in rings.values():
        ring.remove(K1)
    net.run_until(60.0)
    for i in range(1, 5):
        swim = net.node(i)
        assert swim.stats["auth_failures"] == 0
        assert swim.stats["suspicions"] == 0
        assert net.view(i) == {f"node{j}": ALIVE for j in range(1, 5)}


def test_wrong_key_is_rejected_and_counted():
    net, rings = _keyed_cluster(2)
    intruder = net.add(3, keyring=Keyring([K3]))
    net.start(3, [1])
    net.run_until(20.0)
    assert net.view(3) == {"node3": ALIVE}
    assert "node3" not in net.view(1)
    assert net.node(1).stats["auth_failures"] >= 1  # the join stream
    assert intruder.stats["stream_failures"] >= 1
    stranger = packet(codec.alive(1, "evil", "10.6.6.6", 1, b""), keyring=Keyring([K3]))
    net.node(1).receive_packet(20.0, OUTSIDE, stranger)
    assert "evil" not in net.view(1)


def test_plaintext_and_encrypted_nodes_reject_each_other():
    plain = lone(1)
    secret = Swim(SwimConfig(), NodeInfo("s", ("10.0.0.2", 7946), b""), random.Random(1), keyring=Keyring([K1]))
    plain.receive_packet(1.0, OUTSIDE, packet(codec.alive(1, "evil", "10.6.6.6", 1, b""), keyring=Keyring([K1])))
    secret.receive_packet(1.0, OUTSIDE, packet(codec.alive(1, "evil", "10.6.6.6", 1, b"")))
    assert plain.stats["auth_failures"] == 1 and secret.stats["auth_failures"] == 1
    assert state(plain, "evil") is None and state(secret, "evil") is None
    reply, outs = secret.handle_stream(1.0, OUTSIDE, codec.seal(codec.push_pull(True, []), None, codec.STREAM_LABEL))
    assert reply is None and outs == [] and secret.stats["auth_failures"] == 2
    # A sealed UDP packet is not accepted as a stream frame (different associated data).
    frame = packet(codec.alive(1, "evil", "10.6.6.6", 1, b""), keyring=Keyring([K1]))
    assert secret.handle_stream(1.0, OUTSIDE, frame)[0] is None


# --- determinism -----------------------------------------------------------------------------


def _run(seed_base: int) -> list:
    net = Net()
    for i in range(1, 6):
        net.add(i, seed=seed_base + i)
    for i in range(1, 6):
        net.start(i, [1] if i != 1 else [])
    net.run_until(20.0)
    net.stop(4)
    net.run_until(50.0)
    return net.log


def test_same_seed_same_outputs():
    a, b = _run(10), _run(10)
    assert len(a) > 500
    assert a == b
    assert _run(20) != a


def test_start_is_idempotent_and_skips_own_address():
    swim = Swim(SwimConfig(), NodeInfo("me", ME, b""), random.Random(1))
    outs = swim.start(0.0, [ME, member_addr(1), member_addr(1)])
    assert [o.addr for o in outs if isinstance(o, OpenStream)] == [member_addr(1)]
    assert swim.start(0.0, [member_addr(2)]) == []


def test_a_long_probe_timeout_still_detects_failures():
    """Found in review: a probe whose indirect checks had under half a timeout left was taken
    for a stall, so with probe_timeout > 2/3 of the interval no probe could ever fail."""
    net = cluster(5, config=SwimConfig(probe_timeout=0.8), settle=10.0)
    net.stop(5)
    net.run_until(net.now + 60.0)
    assert all(net.view(i)["node5"] == DEAD for i in range(1, 5))
    assert all(net.node(i).stats["probes_inconclusive"] == 0 for i in range(1, 5))


def test_probe_timeout_must_be_below_the_interval():
    with pytest.raises(ValueError, match="probe_timeout"):
        SwimConfig(probe_timeout=1.0, probe_interval=1.0)
