"""Whole nodes with ``--discovery swim`` on the in-memory network: the daemon's adapter,
the member view and the ring, driven by ``task.Clock`` (no sleeps, no sockets)."""

import base64

from twisted.trial.unittest import SynchronousTestCase

from twisted_dhm.membership import ALIVE, DEAD, LEFT
from twisted_dhm.membership.swim.service import GossipError, decode_meta, encode_meta
from twisted_dhm.testing.simulation import GOSSIP_PORT, PEER_PORT, REST_PORT, SimCluster

KEY_A = base64.b64encode(b"a" * 32).decode()
KEY_B = base64.b64encode(b"b" * 16).decode()


def states(node, of=None):
    return {m.id: m.state for m in node.view.members() if of is None or m.id == of}


class SwimNodeTests(SynchronousTestCase):
    def cluster(self, size=5, seed=1, **settings):
        return SimCluster(size, seed=seed, discovery="swim", **settings)

    def assert_everyone_sees(self, sim, member, state, hosts=None):
        for host in hosts or sim.nodes:
            self.assertEqual(states(sim.nodes[host], member), {member: state}, f"as {host} sees it")

    def test_five_nodes_join_through_one_seed_and_share_one_ring(self):
        sim = self.cluster()
        sim.run(5)
        for host, node in sim.nodes.items():
            members = {m.id: m for m in node.view.members()}
            self.assertEqual(set(members), set(sim.hosts), host)
            for m in members.values():
                self.assertEqual(
                    (m.state, m.host, m.peer_port, m.rest_port, m.gossip_port),
                    (ALIVE, m.id, PEER_PORT, REST_PORT, GOSSIP_PORT),
                )
                self.assertGreaterEqual(m.incarnation, 1)
            self.assertEqual(node.routing.table.nodes, frozenset(sim.hosts))
        # The ring works end to end: a write through one node reads back through another.
        sim.result(sim.nodes["node1"].coordinator.put(b"k", b"v"))
        self.assertEqual(sim.result(sim.nodes["node5"].coordinator.get(b"k")).value, b"v")
        self.assertEqual(len(sim.holders(b"k")), 3)

    def test_a_crashed_node_is_dead_everywhere_within_the_suspicion_bound(self):
        sim = self.cluster()
        sim.run(5)
        sim.crash("node3")
        crashed_at = sim.clock.seconds()
        # LAN profile, 4 live members: suspicion min = 4 x max(1, log10 4) x 1 s = 4 s, max = 24 s;
        # with confirmations it lands near the min.  Allow the max plus a few probe periods.
        while sim.clock.seconds() - crashed_at < 30:
            sim.run(0.5)
            if all(states(node, "node3") == {"node3": DEAD} for node in sim.nodes.values()):
                break
        self.assert_everyone_sees(sim, "node3", DEAD)
        took = sim.clock.seconds() - crashed_at
        self.assertLess(took, 30)
        # Dead is not gone: it keeps its partitions (writes for it become hints) until it leaves.
        self.assertIn("node3", sim.nodes["node1"].routing.table.nodes)
        sim.result(sim.nodes["node1"].coordinator.put(b"k2", b"v2"))

    def test_a_restarted_node_rejoins_with_a_higher_incarnation(self):
        sim = self.cluster()
        sim.run(5)
        sim.crash("node4")
        sim.run(30)
        before = sim.nodes["node1"].view.get("node4")
        self.assertEqual(before.state, DEAD)
        sim.start("node4")
        sim.run(10)
        self.assert_everyone_sees(sim, "node4", ALIVE)
        self.assertGreater(sim.nodes["node1"].view.get("node4").incarnation, before.incarnation)

    def test_a_graceful_leave_is_seen_as_left_at_once_and_leaves_the_ring(self):
        sim = self.cluster()
        sim.run(5)
        node2 = sim.nodes.pop("node2")
        node2.stopService()
        sim.run(1)  # far less than any suspicion timeout
        self.assert_everyone_sees(sim, "node2", LEFT)
        for node in sim.nodes.values():
            self.assertNotIn("node2", node.routing.table.nodes)

    def test_encrypted_gossip_joins_and_a_wrong_key_is_refused(self):
        sim = self.cluster(size=3, gossip_keys=KEY_A)
        sim.run(5)
        self.assert_everyone_sees(sim, "node3", ALIVE)
        stranger = sim.start("node9", gossip_keys=KEY_B)
        sim.run(5)
        self.assertEqual(set(states(stranger)), {"node9"}, "a node with the wrong key learns nobody")
        self.assertNotIn("node9", states(sim.nodes["node1"]))
        refused = sum(sim.nodes[h].membership.core.stats["auth_failures"] for h in ("node1", "node2", "node3"))
        self.assertGreater(refused, 0)

    def test_key_rotation_keeps_every_member_alive(self):
        sim = self.cluster(size=3, gossip_keys=KEY_A)
        sim.run(5)
        new = base64.b64decode(KEY_B)
        for step in ("install", "use"):
            for host in sim.hosts:
                sim.nodes[host].membership.change_keys(step, new)
                sim.run(0.3)  # nodes change one by one, gossip running between them
        for host in sim.hosts:
            sim.nodes[host].membership.change_keys("remove", b"a" * 32)
            sim.run(0.3)
        sim.run(10)
        for node in sim.nodes.values():
            self.assertEqual(set(states(node).values()), {ALIVE})
            self.assertEqual(node.membership.keyring.keys, [new])
            self.assertEqual(node.membership.core.stats["dead_declared"], 0)
        with self.assertRaises(GossipError):
            sim.nodes["node1"].membership.change_keys("remove", new)  # the primary cannot go

    def test_metadata_is_checked(self):
        meta = decode_meta(encode_meta(7000, 8080, 2, "0.1.0"))
        self.assertEqual(meta, {"peer": 7000, "rest": 8080, "weight": 2, "version": "0.1.0", "grpc": 0})
        self.assertEqual(decode_meta(encode_meta(7000, 8080, 1, "v", grpc_port=9090))["grpc"], 9090)
        for bad in (
            b"",
            b"[]",
            b"\xff",
            b'{"peer": 0, "rest": 1, "weight": 1}',
            b'{"peer": 7000, "rest": 8080, "weight": true}',
            b'{"peer": "7000", "rest": 1, "weight": 1}',
        ):
            with self.assertRaises(ValueError):
                decode_meta(bad)


class GossipKeysEndpointTests(SynchronousTestCase):
    """``/v1/cluster/gossip/keys`` on a simulated node, through its real site (treq's StubTreq)."""

    def request(self, node, method, body=None):
        import json

        from treq.testing import StubTreq

        treq = StubTreq(node.site.resource)
        d = treq.request(method, "http://node/v1/cluster/gossip/keys",
                         data=None if body is None else (body if isinstance(body, bytes) else json.dumps(body)))
        treq.flush()
        response = self.successResultOf(d)
        return response.code, json.loads(self.successResultOf(response.content()))

    def test_refusals_are_clear(self):
        sim = SimCluster(1, discovery="swim", gossip_keys=KEY_A)
        node = sim.nodes["node1"]
        code, body = self.request(node, "GET")
        self.assertEqual((code, body["encrypted"], len(body["keys"])), (200, True, 1))
        for bad, status in ((b"not json", 400), ({"install": KEY_B, "use": KEY_B}, 400), ({"rotate": KEY_B}, 400),
                            ({"install": "***"}, 400), ({"install": base64.b64encode(b"short").decode()}, 400),
                            ({"use": KEY_B}, 409), ({"remove": KEY_A}, 409)):
            code, body = self.request(node, "POST", bad)
            self.assertEqual(code, status, (bad, body))
            self.assertIn("message", body["error"])
        code, body = self.request(node, "POST", {"install": KEY_B})
        self.assertEqual((code, len(body["keys"])), (200, 2))

    def test_static_nodes_have_no_gossip_keys(self):
        sim = SimCluster(1)
        code, body = self.request(sim.nodes["node1"], "GET")
        self.assertEqual((code, body["error"]["code"]), (409, "conflict"))


class StreamTimeoutTests(SynchronousTestCase):
    def test_a_seed_that_accepts_but_never_answers_fails_after_the_tcp_timeout(self):
        from twisted.internet.protocol import Factory, Protocol

        sim = SimCluster(0, discovery="swim")
        silent = Factory.forProtocol(Protocol)  # accepts the connection, reads, never replies
        sim.network.as_host("node1").listen("node1", GOSSIP_PORT, silent)
        node = sim.start("node2", seed_nodes=f"node1:{GOSSIP_PORT}")  # the silent listener
        core = node.membership.core
        sim.run(9.9)
        self.assertEqual(core.stats["stream_failures"], 0, "still waiting within the 10 s TCP timeout")
        sim.run(0.2)
        self.assertEqual(core.stats["stream_failures"], 1)
        self.assertEqual(set(states(node)), {"node2"})


class KeyringSaveTests(SynchronousTestCase):
    def test_a_key_ring_that_cannot_be_saved_is_not_applied(self):
        import os

        from twisted_dhm.membership.swim.service import KeyringNotSaved

        sim = SimCluster(1, discovery="swim", gossip_keys=KEY_A)
        membership = sim.nodes["node1"].membership
        membership.keyring_path = os.path.join(self.mktemp(), "missing-dir", "gossip-keyring")
        with self.assertRaises(KeyringNotSaved):
            membership.change_keys("install", base64.b64decode(KEY_B))
        self.assertEqual(membership.keyring.keys, [b"a" * 32])
