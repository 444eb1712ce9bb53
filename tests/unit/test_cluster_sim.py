"""Clusters of real nodes on a MemoryNetwork and one task.Clock, with injected faults."""

import json

from treq.testing import StubTreq
from twisted.trial.unittest import SynchronousTestCase

from twisted_dhm.errors import Unavailable
from twisted_dhm.testing.simulation import SimCluster


class ClusterTestCase(SynchronousTestCase):
    size = 3

    def setUp(self):
        self.sim = SimCluster(self.size, seed=1)
        self.sim.run(3)

    def put(self, host, key, value, **kw):
        return self.sim.result(self.sim.nodes[host].coordinator.put(key, value, **kw))

    def get(self, host, key, **kw):
        return self.sim.result(self.sim.nodes[host].coordinator.get(key, **kw))


class FormationTests(ClusterTestCase):
    def test_every_node_sees_every_member_alive_and_the_same_ring(self):
        for node in self.sim.nodes.values():
            self.assertEqual({(m.id, m.state) for m in node.view.members()},
                             {(h, "alive") for h in self.sim.hosts})
        tables = {tuple(n.routing.table.as_dict().items()) for n in self.sim.nodes.values()}
        self.assertEqual(len(tables), 1)

    def test_partition_table_rebuilt_on_membership_changes_only(self):
        routing = self.sim.nodes["node1"].routing
        before = routing.rebuilds
        for i in range(50):
            self.sim.result(self.sim.nodes["node1"].coordinator.put(b"r%d" % i, b"v"))
        self.sim.crash("node3")
        self.sim.run(3)
        self.assertEqual(self.sim.nodes["node1"].view.get("node3").state, "dead")
        self.assertEqual(routing.rebuilds, before, "requests and liveness changes reuse the table")
        self.sim.start("node4")
        self.sim.run(3)
        self.assertEqual(routing.rebuilds, before + 1, "a new member changes the table")
        self.assertIn("node4", routing.table.nodes)

    def test_other_cluster_or_partition_count_is_refused(self):
        self.sim.start("stranger", cluster="other")
        self.sim.start("misfit", partitions="128")
        self.sim.run(5)
        for host in ("node1", "node2", "node3"):
            ids = {m.id for m in self.sim.nodes[host].view.members()}
            self.assertNotIn("stranger", ids)
            self.assertNotIn("misfit", ids)
        self.flushLoggedErrors()


class ReplicationTests(ClusterTestCase):
    def test_write_through_any_node_read_through_any_other(self):
        for i in range(60):
            writer = self.sim.hosts[i % 3]
            self.put(writer, b"k%d" % i, b"v%d" % i)
        for i in range(60):
            for reader in self.sim.hosts:
                self.assertEqual(self.get(reader, b"k%d" % i).value, b"v%d" % i)
        self.sim.run(2)
        for i in range(60):
            self.assertEqual(self.sim.holders(b"k%d" % i), set(self.sim.hosts))

    def test_concurrent_writers_end_with_one_winner_everywhere(self):
        nodes = self.sim.nodes
        ds = [nodes[h].coordinator.put(b"hot", h.encode()) for h in self.sim.hosts for _ in range(3)]
        for d in ds:
            self.sim.result(d)
        self.sim.run(2)
        versions = {engine.get(b"hot").version for engine, _ in self.sim.disks.values()}
        self.assertEqual(len(versions), 1, versions)
        values = {self.get(h, b"hot").value for h in self.sim.hosts}
        self.assertEqual(len(values), 1)

    def test_writes_to_a_peer_in_one_turn_share_a_frame(self):
        node1 = self.sim.nodes["node1"]
        before = node1.replicas.frames_sent["replica_put"]
        ds = [node1.coordinator.put(b"batch%d" % i, b"v") for i in range(100)]
        for d in ds:
            self.sim.result(d)
        self.assertEqual(node1.replicas.frames_sent["replica_put"] - before, 2, "one ReplicaPut to each peer")
        self.sim.run(1)
        for i in range(100):
            self.assertEqual(self.sim.holders(b"batch%d" % i), set(self.sim.hosts))

    def test_batches_stay_within_their_byte_bound(self):
        node1 = self.sim.nodes["node1"]
        node1.replicas.max_batch_bytes = 250_000
        before = node1.replicas.frames_sent["replica_put"]
        ds = [node1.coordinator.put(b"big%d" % i, b"x" * 100_000) for i in range(10)]
        for d in ds:
            self.sim.result(d)
        # 10 values of 100 kB, at most 2 per frame (a third would pass 250 kB), to each of 2 peers
        self.assertEqual(node1.replicas.frames_sent["replica_put"] - before, 2 * 5)
        reads = [self.sim.nodes["node2"].coordinator.get(b"big%d" % i) for i in range(10)]
        for d in reads:
            self.assertEqual(self.sim.result(d).value, b"x" * 100_000)

    def test_if_match_is_checked_cluster_wide(self):
        from twisted_dhm.cluster.coordinator import Precondition
        from twisted_dhm.errors import PreconditionFailed

        v1 = self.put("node1", b"cas", b"1").version
        self.put("node2", b"cas", b"2", precondition=Precondition(if_match=(v1,)))
        with self.assertRaises(PreconditionFailed):
            self.put("node3", b"cas", b"3", precondition=Precondition(if_match=(v1,)))
        self.assertEqual(self.get("node1", b"cas").value, b"2")

    def test_racing_conditional_writes_through_one_node_one_passes(self):
        """Sent at once (the quorum reads of both would otherwise be answered before either
        write reached a replica): one If-Match write passes, the other is 412; of two
        create-only writes, one creates."""
        from twisted_dhm.cluster.coordinator import ANY, Precondition
        from twisted_dhm.errors import PreconditionFailed

        coordinator = self.sim.nodes["node1"].coordinator
        v0 = self.put("node1", b"cas", b"0").version
        for key, condition in ((b"cas", Precondition(if_match=(v0,))), (b"new", Precondition(if_none_match=ANY))):
            racing = [coordinator.put(key, b"%d" % i, precondition=condition) for i in range(3)]
            outcomes = []
            for d in racing:
                try:
                    outcomes.append(self.sim.result(d).version)
                except PreconditionFailed:
                    outcomes.append(None)
            [winner] = [v for v in outcomes if v is not None]
            self.assertEqual(outcomes.count(None), 2, key)
            self.assertEqual(self.get("node2", key, r="all").version, winner)
        self.assertEqual(coordinator._conditional, {}, "nothing left waiting")

    def test_listing_merges_every_member(self):
        for i in range(30):
            self.put(self.sim.hosts[i % 3], b"list/%02d" % i, b"x")
        self.sim.result(self.sim.nodes["node2"].coordinator.delete(b"list/07"))
        page = self.sim.result(self.sim.nodes["node3"].coordinator.list(b"list/", None, 100))
        self.assertEqual(page.keys, [b"list/%02d" % i for i in range(30) if i != 7])


class FailureTests(ClusterTestCase):
    def test_one_of_three_crashed_quorum_still_works(self):
        self.put("node1", b"before", b"1")
        self.sim.crash("node3")
        for i in range(20):
            self.put("node1", b"during%d" % i, b"v")
            self.assertEqual(self.get("node2", b"during%d" % i).value, b"v")
        self.assertEqual(self.get("node2", b"before").value, b"1")
        self.sim.run(3)
        self.assertEqual(self.sim.nodes["node1"].view.get("node3").state, "dead")
        with self.assertRaises(Unavailable) as ctx:
            self.put("node1", b"all", b"v", w="all")
        self.assertEqual((ctx.exception.acks, ctx.exception.required), (0, 3))

    def test_returning_node_gets_the_writes_it_missed(self):
        """Three nodes, N=3: no spare node to stand in, so the coordinator keeps the hints,
        both before the failure detector has noticed (the write to node3 fails) and after."""
        self.sim.crash("node3")
        for i in range(25):
            self.put("node1", b"missed%d" % i, b"v")
        self.sim.run(3)
        self.assertEqual(self.sim.nodes["node1"].view.get("node3").state, "dead")
        for i in range(25, 50):
            self.put("node1", b"missed%d" % i, b"v")
        self.assertEqual(self.sim.nodes["node1"].handoff.queued(), 50)
        self.sim.start("node3")
        self.sim.run(5)
        for i in range(50):
            self.assertEqual(self.sim.disks["node3"][0].get(b"missed%d" % i).value, b"v")
        self.assertEqual(self.sim.nodes["node1"].handoff.queued(), 0)

    def test_two_of_three_crashed_quorum_write_fails_with_counts(self):
        self.sim.crash("node2")
        self.sim.crash("node3")
        with self.assertRaises(Unavailable) as ctx:
            self.put("node1", b"k", b"v")
        self.assertEqual((ctx.exception.acks, ctx.exception.required), (1, 2))
        self.assertTrue(self.put("node1", b"k", b"v", w="one").created, "w=one stays available")
        # A write that failed its quorum is not rolled back: the replica that acknowledged keeps it.
        self.sim.nodes["node1"].replica.engine.write(b"k", None)
        self.put("node1", b"k2", b"x", w="one")
        with self.assertRaises(Unavailable):
            self.put("node1", b"k2", b"y")  # node1 has k2: one round trip, one ack of two
        self.assertEqual(self.sim.disks["node1"][0].get(b"k2").value, b"y")

    def test_rest_reports_503_with_acks(self):
        self.sim.crash("node2")
        self.sim.crash("node3")
        self.sim.run(3)
        treq = StubTreq(self.sim.nodes["node1"].site.resource)
        d = treq.put("http://node1/v1/kv/k?w=quorum", data=b"v")
        treq.flush()
        response = self.sim.result(d)
        self.assertEqual(response.code, 503)
        body = json.loads(self.sim.result(response.content()))
        self.assertEqual(body["error"]["code"], "unavailable")
        self.assertEqual(body["error"]["required"], 2)

    def test_read_repair_updates_a_stale_replica(self):
        for node in self.sim.nodes.values():
            node.handoff.stopService()  # so hints do not get there first
        self.sim.network.isolate("node3")
        self.sim.run(0.1)
        self.put("node1", b"rr", b"new")
        self.assertIsNone(self.sim.disks["node3"][0].get(b"rr"))
        self.sim.network.rejoin("node3")
        self.sim.run(3)
        self.assertEqual(self.get("node1", b"rr", r="all").value, b"new")
        self.sim.run(1)
        self.assertEqual(self.sim.disks["node3"][0].get(b"rr").value, b"new")
        self.assertGreaterEqual(self.sim.nodes["node1"].coordinator.read_repairs, 1)


    def test_a_write_and_a_read_repair_of_one_key_in_one_frame_leave_the_newer(self):
        """node1 sends node3, in one turn, a client's write (w=all) and the read repair of an
        older read whose answer came late: one frame carries the key twice, newer first.  The
        replica must keep the newer, which it acknowledged, not the one it received last."""
        self.put("node1", b"k", b"R")
        self.sim.run(1)
        older = self.sim.disks["node1"][0].get(b"k")
        self.sim.nodes["node3"].engine.write(b"k", None)  # node3 missed it
        self.sim.run(0.1)
        coordinator = self.sim.nodes["node1"].coordinator
        written = coordinator.put(b"k", b"W", w="all")
        coordinator._repair(b"k", {"node1": older, "node3": None})  # the late read's repair
        self.sim.result(written)
        self.sim.run(1)
        for host in self.sim.hosts:
            self.assertEqual(self.sim.disks[host][0].get(b"k").value, b"W", host)


class NonReplicaCoordinatorTests(ClusterTestCase):
    size = 4

    def test_w_one_through_a_node_that_is_not_a_replica_needs_one_replica(self):
        """Two of the key's three replicas down: a w=one write through the fourth node reads one
        replica to build on (not a quorum it cannot have), as through the replica itself."""
        routing = self.sim.nodes["node4"].routing
        key = next(k for k in (b"k%d" % i for i in range(1000)) if "node4" not in routing.preference(k))
        owners = routing.preference(key)
        for host in owners[:2]:
            self.sim.crash(host)
        self.sim.run(5)  # found dead
        self.put("node4", key, b"b", w="one", sloppy=False)
        self.assertEqual(self.sim.disks[owners[2]][0].get(key).value, b"b")
        with self.assertRaises(Unavailable):  # a quorum it still cannot have
            self.put("node4", key, b"c", sloppy=False)


class FrameLimitTests(SynchronousTestCase):
    """Batches of replica operations must fit the peers' frame limit, whatever the values."""

    def setUp(self):
        self.sim = SimCluster(3, seed=2, max_value_size=str(64 * 1024))  # frame limit about 1 MiB
        self.sim.run(3)

    def test_reads_of_large_values_batched_past_one_frame(self):
        n1 = self.sim.nodes["node1"]
        for i in range(40):
            self.sim.result(n1.coordinator.put(b"big%d" % i, b"x" * 60_000))
        self.sim.run(1)
        reads = [n1.coordinator.get(b"big%d" % i, r="all") for i in range(40)]  # one turn: one batch
        for d in reads:
            self.assertEqual(len(self.sim.result(d).value), 60_000)

    def test_writes_batched_within_the_frame_limit(self):
        n1 = self.sim.nodes["node1"]
        writes = [n1.coordinator.put(b"w%d" % i, b"y" * 60_000, w="all") for i in range(40)]
        for d in writes:
            self.assertTrue(self.sim.result(d).created)


class HistoryTests(ClusterTestCase):
    def test_write_after_a_reaped_tombstone_is_not_lost(self):
        """node1 reaps a tombstone its peers still hold; a later acknowledged write must win."""
        sim = self.sim
        n1 = sim.nodes["node1"]
        for i in range(3):
            self.put("node1", b"k", b"v%d" % i)
        sim.result(n1.coordinator.delete(b"k"))
        sim.run(2)
        for node in sim.nodes.values():
            node.reaper.stopService()
        n1.reaper.grace_ms = 1000
        sim.run(2)
        sim.result(n1.reaper.run_once())
        self.assertIsNone(sim.disks["node1"][0].get(b"k"), "node1 reaped it; node2 and node3 still have it")
        self.put("node1", b"k", b"NEW", w="all")
        sim.run(2)
        for host in sim.hosts:
            self.assertEqual(self.get(host, b"k", r="all").value, b"NEW")

    def test_write_after_a_quorum_reaped_the_tombstone_is_not_lost(self):
        """Only node3 still holds the tombstone, so the quorum read finds nothing: the
        hybrid counter still makes the new version supersede it."""
        sim = self.sim
        self.put("node1", b"q", b"old")
        sim.result(sim.nodes["node1"].coordinator.delete(b"q"))
        sim.run(2)
        for host in ("node1", "node2"):
            sim.nodes[host].replica.engine.write(b"q", None)  # as their reapers would
        self.assertTrue(sim.disks["node3"][0].get(b"q").tombstone)
        self.put("node1", b"q", b"NEW", w="all")
        sim.run(2)
        for host in sim.hosts:
            self.assertEqual(self.get(host, b"q", r="all").value, b"NEW")
            self.assertEqual(sim.disks[host][0].get(b"q").value, b"NEW")

    def test_write_through_a_replica_that_missed_the_key_builds_on_the_others(self):
        sim = self.sim
        sim.network.isolate("node1")
        sim.run(0.1)
        self.put("node2", b"m", b"first", w="quorum")
        sim.network.rejoin("node1")
        sim.run(3)
        result = self.put("node1", b"m", b"second")
        self.assertFalse(result.created, "node1 read the quorum and saw the first write")
        sim.run(1)
        for host in sim.hosts:
            self.assertEqual(self.get(host, b"m", r="all").value, b"second")


class HintedHandoffTests(ClusterTestCase):
    size = 5

    def test_fallback_holds_hints_and_hands_them_over(self):
        sim = self.sim
        sim.crash("node5")
        sim.run(3)
        self.assertEqual(sim.nodes["node1"].view.get("node5").state, "dead")
        keys = [b"h%d" % i for i in range(200)]
        for key in keys:
            self.put("node1", key, b"v", w="all")  # all = N acks: only possible with fallbacks
        theirs = [k for k in keys if "node5" in sim.nodes["node1"].routing.preference(k)]
        self.assertTrue(theirs)
        queued = sum(n.handoff.queued() for n in sim.nodes.values())
        self.assertEqual(queued, len(theirs))
        for key in theirs:
            self.assertIsNone(sim.disks["node5"][0].get(key))
        sim.start("node5")
        sim.run(6)
        for key in theirs:
            self.assertEqual(sim.disks["node5"][0].get(key).value, b"v")
        self.assertEqual(sum(n.handoff.queued() for n in sim.nodes.values()), 0)
        for key in keys:
            self.assertEqual(sim.holders(key), set(sim.nodes["node1"].routing.preference(key)))

    def test_large_hints_go_home_in_batches_that_fit_a_frame(self):
        sim = self.sim
        sim.crash("node5")
        sim.run(3)
        keys = [k for k in (b"big%d" % i for i in range(400))
                if "node5" in sim.nodes["node1"].routing.preference(k)][:12]
        value = b"x" * (1024 * 1024)
        for key in keys:
            self.put("node1", key, value)
        for node in sim.nodes.values():
            node.handoff.batch_bytes = 3 * 1024 * 1024
        sim.start("node5")
        sim.run(10)
        for key in keys:
            self.assertEqual(sim.disks["node5"][0].get(key).value, value)

    def test_strict_quorum_refuses_instead_of_hinting(self):
        sim = self.sim
        sim.crash("node5")
        sim.run(3)
        key = next(b"s%d" % i for i in range(1000)
                   if "node5" in sim.nodes["node1"].routing.preference(b"s%d" % i))
        with self.assertRaises(Unavailable):
            self.put("node1", key, b"v", w="all", sloppy=False)
        for node in sim.nodes.values():
            node.replica.hints.write(b"node5\x00" + key, None)
        self.put("node1", key, b"v", w="quorum", sloppy=False)
        # No fallback stood in; only the coordinator keeps a hint (not counted towards w), so
        # node5 still gets the write when it is back.
        queued = {host: n.handoff.queued() for host, n in sim.nodes.items()}
        coordinator_hints = queued.pop("node1")
        self.assertEqual((coordinator_hints, sum(queued.values())), (1, 0))

    def test_each_key_on_exactly_n_nodes(self):
        for i in range(100):
            self.put(self.sim.hosts[i % 5], b"n%d" % i, b"v")
        self.sim.run(2)
        for i in range(100):
            holders = self.sim.holders(b"n%d" % i)
            self.assertEqual(len(holders), 3)
            self.assertEqual(holders, set(self.sim.nodes["node2"].routing.preference(b"n%d" % i)))


class StopOrderTests(SynchronousTestCase):
    def test_grpc_stops_before_the_store_closes(self):
        # gRPC's thread reads the store directly (Coordinator.get_now): the store must not
        # close until that service has stopped.
        from twisted.application.service import Service
        from twisted.internet.defer import Deferred, succeed

        sim = SimCluster(1, seed=1)
        node = sim.nodes["node1"]

        class Grpc(Service):
            stopping = Deferred()

            def stopService(self):
                was_running = self.running
                super().stopService()
                return self.stopping if was_running else None

        node.grpc = Grpc()
        node.grpc.setServiceParent(node)
        closed = []
        for engine in node.getServiceNamed("store").engines:
            engine.close = lambda: closed.append(1) or succeed(None)
        stopped = node.stopService()
        self.assertEqual(closed, [], "the store waits for gRPC")
        node.grpc.stopping.callback(None)
        self.assertEqual(closed, [1, 1])
        self.successResultOf(stopped)
