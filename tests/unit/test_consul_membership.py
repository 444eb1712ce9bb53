"""Nodes with ``--discovery consul`` against the Consul double, on the in-memory network and task.Clock."""

from twisted.trial.unittest import SynchronousTestCase
from twisted.web import server

from twisted_dhm.membership import ALIVE, DEAD
from twisted_dhm.testing.consul_double import ConsulDouble
from twisted_dhm.testing.simulation import SimCluster


def states(node):
    return {m.id: m.state for m in node.view.members()}


class ConsulTests(SynchronousTestCase):
    def cluster(self, size=3, token=None, **settings):
        sim = SimCluster(0, seed=3, discovery="consul", consul_addr="consul:8500", consul_ttl="3", **settings)
        self.double = ConsulDouble(sim.clock, token=token)
        site = server.Site(self.double)
        site.noisy = False
        sim.network.as_host("consul").listen("consul", 8500, site)
        for i in range(1, size + 1):
            sim.start(f"node{i}")
        return sim

    def everyone(self, sim, expected):
        return all(states(n) == expected for n in sim.nodes.values())

    def test_nodes_register_and_find_each_other(self):
        sim = self.cluster()
        sim.run(3)
        alive = {"node1": ALIVE, "node2": ALIVE, "node3": ALIVE}
        self.assertTrue(self.everyone(sim, alive), {h: states(n) for h, n in sim.nodes.items()})
        reg = self.double.services["dhashmap-node2"]
        self.assertEqual(reg["Meta"]["peer_port"], "7000")
        self.assertEqual(reg["Meta"]["cluster"], "dhashmap")
        self.assertEqual(self.double.checks["service:dhashmap-node2"]["status"], "passing")
        sim.result(sim.nodes["node1"].coordinator.put(b"k", b"v"))
        self.assertEqual(sim.result(sim.nodes["node3"].coordinator.get(b"k")).value, b"v")

    def test_a_crashed_node_fails_its_ttl_and_is_dead_everywhere(self):
        sim = self.cluster(health_interval="100")  # no pings: Consul alone must notice
        sim.run(3)
        sim.crash("node3")
        sim.run(3 + 1)  # TTL 3 s, then the blocked queries answer at once
        for host in ("node1", "node2"):
            self.assertEqual(states(sim.nodes[host])["node3"], DEAD)

    def test_a_clean_stop_deregisters_at_once(self):
        sim = self.cluster()
        sim.run(3)
        node = sim.nodes.pop("node2")
        node.stopService()
        sim.run(0.5)
        self.assertNotIn("dhashmap-node2", self.double.services)
        self.assertEqual(states(sim.nodes["node1"])["node2"], DEAD)

    def test_an_index_that_goes_backwards_is_reset_without_a_busy_loop(self):
        sim = self.cluster()
        sim.run(3)
        before = len(self.double.requests)
        self.double.set_index(1)
        sim.run(5)
        queries = [p for m, p in self.double.requests[before:] if m == "GET"]
        self.assertLess(len(queries), 3 * 5 / 0.2 + 3, "rate limited")
        self.assertTrue(self.everyone(sim, {"node1": ALIVE, "node2": ALIVE, "node3": ALIVE}))
        # And it still blocks afterwards: a quiet minute costs a few queries per node, not hundreds.
        before = len(self.double.requests)
        sim.run(60)
        gets = sum(1 for m, _ in self.double.requests[before:] if m == "GET")
        self.assertLessEqual(gets, 3 * 4)

    def test_agent_down_keeps_the_view_and_reports_degraded(self):
        sim = self.cluster()
        sim.run(3)
        self.double.down = True
        sim.run(35)  # past a blocking query's wait, and several failed check passes
        node = sim.nodes["node1"]
        self.assertTrue(node.membership.problems())
        self.assertIn("503", node.membership.problems()[0])
        self.assertEqual(states(node), {"node1": ALIVE, "node2": ALIVE, "node3": ALIVE})
        self.double.down = False
        sim.run(10)
        self.assertEqual(node.membership.problems(), [])
        self.assertTrue(self.everyone(sim, {"node1": ALIVE, "node2": ALIVE, "node3": ALIVE}))

    def test_garbage_answers_are_reported_not_fatal(self):
        sim = self.cluster(size=1)
        self.double.garbage = True
        sim.run(5)
        problems = sim.nodes["node1"].membership.problems()
        self.assertTrue(problems and "not JSON" in problems[0], problems)
        self.double.garbage = False
        sim.run(5)
        self.assertEqual(sim.nodes["node1"].membership.problems(), [])

    def test_other_clusters_and_broken_entries_are_ignored(self):
        sim = self.cluster(size=1)
        self.double.services["other-x"] = {"Name": "dhashmap", "Meta": {"cluster": "other", "node_id": "x",
                                                                        "peer_port": "1", "rest_port": "1"}}
        self.double.services["broken-y"] = {"Name": "dhashmap", "Meta": {"cluster": "dhashmap", "node_id": "y",
                                                                         "peer_port": "not a port"}}
        self.double.services["infinite-z"] = {"Name": "dhashmap", "Meta": {"cluster": "dhashmap", "node_id": "z",
                                                                           "peer_port": float("inf"),
                                                                           "rest_port": "1"}}
        self.double._changed()
        sim.run(3)
        self.assertEqual(states(sim.nodes["node1"]), {"node1": ALIVE})

    def test_acl_token(self):
        sim = self.cluster(size=1, token="s3cret", consul_token="s3cret")
        sim.run(3)
        self.assertIn("dhashmap-node1", self.double.services)
        stranger = sim.start("node2", consul_token="wrong")
        sim.run(3)
        self.assertIn("403", stranger.membership.problems()[0])

    def test_a_forgotten_service_registers_again(self):
        sim = self.cluster(size=2)
        sim.run(3)
        self.double._deregister("dhashmap-node2")  # the agent lost its state
        self.double._changed()
        sim.run(3)
        self.assertIn("dhashmap-node2", self.double.services)
        self.assertEqual(states(sim.nodes["node1"])["node2"], ALIVE)
