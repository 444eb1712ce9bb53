"""The connection pool: reconnects, backoff with jitter, identity checks, on a MemoryNetwork."""

import random

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from twisted_dhm.network import MemoryNetwork
from twisted_dhm.peer import peer_pb2 as pb
from twisted_dhm.peer.pool import PeerPool, PeerUnreachable
from twisted_dhm.peer.protocol import LocalIdentity, PeerFactory
from twisted_dhm.testing.simulation import run_for


def ping():
    return pb.Frame(ping=pb.Ping(sent_at_ms=1))


class PoolTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.net = MemoryNetwork(self.clock, random.Random(3))
        self.addresses = {"b": ("hostb", 7000)}
        self.pool = PeerPool(self.net.as_host("hosta"), self.clock, random.Random(4),
                             LocalIdentity("c", "a"), self.addresses.get, connect_timeout=1.0,
                             request_timeout=1.0, backoff_base=0.1, backoff_max=2.0)

    def serve(self, node_id="b", host="hostb", cluster="c"):
        return self.net.listen(host, 7000, PeerFactory(LocalIdentity(cluster, node_id), self.clock, None))

    def result(self, d, seconds=5.0):
        out = []
        d.addBoth(out.append)
        run_for(self.clock, seconds)
        self.assertTrue(out, "no result")
        return out[0]

    def test_one_connection_shared_by_requests(self):
        self.serve()
        answers = [self.pool.request("b", ping()) for _ in range(5)]
        run_for(self.clock, 1)
        for d in answers:
            self.assertEqual(self.successResultOf(d).pong.node_id, "b")
        self.assertTrue(self.pool.connected("b"))

    def test_both_ends_of_a_peer_connection_send_without_delay(self):
        # Nagle's algorithm held small frames for the peer's delayed ACK: 5-40 ms requests.
        served = []
        factory = PeerFactory(LocalIdentity("c", "b"), self.clock, None)
        build = factory.buildProtocol
        factory.buildProtocol = lambda addr: served.append(build(addr)) or served[-1]
        self.net.listen("hostb", 7000, factory)
        self.assertEqual(self.result(self.pool.request("b", ping())).pong.node_id, "b")
        self.assertEqual(len(served), 1)
        self.assertTrue(served[0].transport.getTcpNoDelay())
        self.assertTrue(self.pool._sessions["b"].transport.getTcpNoDelay())

    def test_backoff_grows_with_jitter_then_recovers(self):
        first = self.result(self.pool.request("b", ping()), 0.01)  # refused after a round trip
        self.assertIsInstance(first.value, PeerUnreachable)
        # During backoff a request fails at once, without touching the network.
        fast = self.pool.request("b", ping())
        self.assertIsInstance(self.failureResultOf(fast).value, PeerUnreachable)
        self.assertIn("next attempt", str(self.failureResultOf(self.pool.request("b", ping())).value))
        waits = []
        for _ in range(6):
            run_for(self.clock, self.pool._retry_at["b"] - self.clock.seconds() + 0.001)
            before = self.clock.seconds()
            self.result(self.pool.request("b", ping()), 0.01)
            waits.append(self.pool._retry_at["b"] - before)
        self.assertLessEqual(max(waits), 2.0 * 1.5 + 0.01, "capped at backoff_max times the jitter")
        self.assertGreater(waits[3], waits[0], "grows")
        self.assertNotEqual(len({round(w, 6) for w in waits[-3:]}), 1, "jittered")
        # The peer comes up: after the backoff the next request connects.
        self.serve()
        run_for(self.clock, 3.1)
        answer = self.result(self.pool.request("b", ping()))
        self.assertEqual(answer.pong.node_id, "b")

    def test_wrong_node_at_the_address_is_refused(self):
        self.serve(node_id="impostor")
        failure = self.result(self.pool.request("b", ping()))
        self.assertIn("impostor", str(failure.value))
        self.assertFalse(self.pool.connected("b"))

    def test_lost_connection_is_reopened(self):
        self.serve()
        self.result(self.pool.request("b", ping()))
        self.net.crash("hostb")
        run_for(self.clock, 0.1)
        self.assertFalse(self.pool.connected("b"))
        self.serve()
        run_for(self.clock, 3)
        self.assertEqual(self.result(self.pool.request("b", ping())).pong.node_id, "b")

    def test_request_timeout_on_a_hung_peer(self):
        self.serve()
        self.result(self.pool.request("b", ping()))
        self.net.partition({"hosta"}, {"hostb"})
        failure = self.result(self.pool.request("b", ping()), 2)
        self.assertIsNotNone(failure.value)

    def test_probe_learns_who_is_there(self):
        self.serve(node_id="b")
        hello = self.result(self.pool.probe("hostb", 7000))
        self.assertEqual(hello.node_id, "b")
        self.assertTrue(self.pool.connected("b"))

    def test_closed_pool_refuses(self):
        self.serve()
        self.result(self.pool.request("b", ping()))
        self.pool.close()
        self.assertIsInstance(self.result(self.pool.request("b", ping())).value, PeerUnreachable)
