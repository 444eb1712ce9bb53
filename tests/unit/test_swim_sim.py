"""The SWIM core in the deterministic simulator: small clusters, fixed seeds, no sleeps.

These are end-to-end checks of the protocol (detection, no false positives under loss,
joins, partitions, restarts) and of the simulator itself (determinism, streams, stalls).
The numbers for big clusters are in docs/swim.md (bench/swim_eval.py).
"""

import statistics

from twisted.trial.unittest import SynchronousTestCase

from twisted_dhm.membership.swim.config import SwimConfig
from twisted_dhm.testing.simulation import SimCluster
from twisted_dhm.testing.swim_sim import (
    SwimSimulation,
    detection,
    false_dead,
    join_everywhere,
    node_name,
    suspicion_min,
)

LAN = SwimConfig.profile("lan")


def formed(n, seed, **kw):
    sim = SwimSimulation(n, seed=seed, **kw)
    when = sim.run_until_converged(timeout=120, quiet=True)
    assert when is not None, f"{n} members (seed {seed}) did not converge in 120 s"
    return sim


class DetectionTests(SynchronousTestCase):
    def test_crashed_member_dead_everywhere_within_the_bound(self):
        """Median over crashes within suspicion-min + 3 periods; each within the longest suspicion timeout."""
        n = 10
        bound = suspicion_min(LAN, n) + 3 * LAN.probe_interval
        worst = suspicion_min(LAN, n) * LAN.suspicion_max_timeout_mult + 3 * LAN.probe_interval
        times = []
        for seed in (1, 2, 3):
            sim = formed(n, seed)
            victim = node_name(seed + 2)
            crashed_at = sim.now
            sim.crash(victim)
            sim.run(worst + 5)
            det = detection(sim.events, victim, crashed_at, [m.name for m in sim.up()])
            self.assertEqual(det.missing, (), f"seed {seed}: never declared dead by {det.missing}")
            self.assertLessEqual(det.dead_everywhere, worst, f"seed {seed}")
            self.assertLess(det.first_suspect, 5 * LAN.probe_interval, f"seed {seed}")
            times.append(det.dead_everywhere)
            for member in sim.up():
                self.assertEqual(sim.views(member.name)[victim], "dead")
        self.assertLessEqual(statistics.median(times), bound, times)

    def test_no_false_positives_at_ten_percent_loss_with_lifeguard(self):
        sim = formed(20, seed=4)
        sim.loss = 0.10
        start = sim.now
        sim.run(180)
        self.assertEqual(false_dead(sim.events, lambda subject, at: True, since=start), [])
        sim.loss = 0.0
        sim.run(5)
        for member in sim.up():
            self.assertEqual(set(sim.views(member.name).values()), {"alive"}, member.name)


class MembershipTests(SynchronousTestCase):
    def test_join_known_to_all_and_joiner_knows_all(self):
        sim = formed(10, seed=5)
        started = sim.now
        new = sim.join()
        sim.run(10)
        took = join_everywhere(sim.events, new.name, started, [m.name for m in sim.up()])
        self.assertIsNotNone(took)
        self.assertLess(took, 5.0)
        self.assertEqual(set(sim.views(new.name)), {m.name for m in sim.up()})

    def test_partition_then_heal_merges_both_sides(self):
        sim = formed(10, seed=6)
        left = [node_name(i) for i in range(5)]
        right = [node_name(i) for i in range(5, 10)]
        sim.partition(left)
        sim.run(60)
        for name in left:
            view = sim.views(name)
            self.assertEqual({view[r] for r in right}, {"dead"}, name)
            self.assertEqual({view[x] for x in left}, {"alive"}, name)
        sim.heal()
        healed = sim.run_until_converged(timeout=180)
        self.assertIsNotNone(healed, "the two sides never found each other again")
        for member in sim.up():
            self.assertEqual(set(sim.views(member.name).values()), {"alive"}, member.name)

    def test_restarted_member_is_alive_again_everywhere(self):
        sim = formed(8, seed=7)
        sim.crash("n0003")
        sim.run(40)
        self.assertEqual(sim.views("n0000")["n0003"], "dead")
        sim.restart("n0003")
        self.assertIsNotNone(sim.run_until_converged(timeout=60))
        for member in sim.up():
            self.assertEqual(sim.views(member.name)["n0003"], "alive", member.name)

    def test_graceful_leave_is_left_everywhere(self):
        sim = formed(8, seed=8)
        sim.leave("n0002", linger=1.0)
        sim.run(10)
        for member in sim.up():
            self.assertEqual(sim.views(member.name)["n0002"], "left", member.name)


class SimulatorTests(SynchronousTestCase):
    def run_log(self, seed):
        sim = SwimSimulation(12, seed=seed, loss=0.05, duplicate=0.01)
        sim.run(20)
        sim.crash("n0004")
        sim.stall("n0007", 3.0)
        sim.run(25)
        return sim.events, sim.stats

    def test_same_seed_same_run(self):
        first, second = self.run_log(9), self.run_log(9)
        self.assertGreater(len(first[0]), 100)
        self.assertEqual(first, second)
        self.assertNotEqual(first[0], self.run_log(10)[0])

    def test_stream_to_unreachable_seed_fails_after_tcp_timeout(self):
        sim = SwimSimulation(2, seed=11, form=False)
        sim.start("n0000")
        sim.crash("n0000")
        sim.start("n0001", seeds=["n0000"])
        sim.run(LAN.tcp_timeout - 0.1)
        self.assertEqual(sim.stats["stream_failures"], 0)
        sim.run(0.2)
        self.assertEqual(sim.stats["stream_failures"], 1)
        self.assertEqual(set(sim.views("n0001")), {"n0001"})

    def test_stalled_member_queues_its_packets_and_catches_up(self):
        sim = formed(6, seed=12)
        sim.stall("n0002", 2.0)
        sim.run(1.0)
        node = sim.node("n0002")
        self.assertTrue(node.stalled)
        self.assertGreater(len(node.io_backlog), 0, "datagrams to a stalled member wait in its buffer")
        received = node.core.stats["packets_received"]
        sim.run(1.5)
        self.assertFalse(node.stalled)
        self.assertGreater(node.core.stats["packets_received"], received)
        self.assertEqual(len(node.io_backlog), 0)
        sim.run(10)
        for member in sim.up():
            self.assertEqual(sim.views(member.name)["n0002"], "alive", "a 2 s stall is not a death")

    def test_member_stalled_beyond_the_suspicion_timeout_is_declared_dead_and_refutes(self):
        sim = formed(6, seed=13, stall_buffer=5)
        sim.stall("n0001", 60.0)
        sim.run(59)
        self.assertEqual(sim.views("n0000")["n0001"], "dead")
        self.assertGreater(sim.stats["overflow"], 0, "a full socket buffer drops datagrams")
        self.assertIsNotNone(sim.run_until_converged(timeout=90))

    def test_slow_member_handles_each_event_late_but_keeps_running(self):
        sim = formed(6, seed=15)
        node = sim.node("n0002")
        sim.slow("n0002", (0.4, 0.6))
        received = node.core.stats["packets_received"]
        probes = node.core.stats["probes"]
        for _ in range(100):  # until the first datagram arrives (checked every 50 ms)
            sim.run(0.05)
            if node.slow_pending:
                break
        self.assertGreater(node.slow_pending, 0, "datagrams wait to be handled")
        self.assertEqual(node.core.stats["packets_received"], received, "nothing is handled before the delay")
        sim.run(0.6)
        self.assertGreater(node.core.stats["packets_received"], received, "handled after at most 0.6 s")
        sim.run(20)
        self.assertFalse(node.stalled)
        self.assertGreater(node.core.stats["packets_received"], received + 20)
        self.assertGreater(node.core.stats["probes"], probes + 10, "its own timers still fire, late")
        for member in sim.up():
            self.assertEqual(sim.views(member.name)["n0002"], "alive", "half a second late is not dead")

    def test_slow_member_acks_too_late_for_the_probe_timeout_and_is_suspected(self):
        sim = formed(6, seed=16)
        sim.slow("n0003", (1.0, 1.5), until=sim.now + 30)
        start = sim.now
        sim.run(30)
        suspected = [e for e in sim.events if e.time >= start and e.subject == "n0003" and e.state == "suspect"]
        self.assertGreater(len(suspected), 0, "acks a second late miss every probe timeout")
        sim.run(30)
        self.assertIsNone(sim.node("n0003").slow, "slow only until the given time")
        for member in sim.up():
            self.assertEqual(sim.views(member.name)["n0003"], "alive", member.name)

    def test_slow_member_with_timers_on_time_keeps_its_probe_rate(self):
        def probes_in_20s(timers):
            # Lifeguard off: its health score would stretch the probe interval of a member whose acks are late.
            sim = formed(6, seed=19, config=SwimConfig.profile("lan", lifeguard=False))
            node = sim.node("n0001")
            sim.slow("n0001", (2.0, 2.0), timers=timers)
            before = node.core.stats["probes"]
            sim.run(20)
            return node.core.stats["probes"] - before

        late, on_time = probes_in_20s(True), probes_in_20s(False)
        self.assertGreaterEqual(on_time, 18, "one probe per period when only what arrives waits")
        self.assertLessEqual(late, 10, "probe ticks fire up to 2 s late when the timers wait too")

    def test_slow_member_drops_datagrams_beyond_its_buffer(self):
        sim = formed(8, seed=17, stall_buffer=3)
        sim.slow("n0001", (2.0, 2.0))
        sim.run(5)
        self.assertGreater(sim.stats["overflow"], 0)
        self.assertLessEqual(sim.node("n0001").slow_pending, 3)

    def test_slow_runs_are_deterministic(self):
        def run(seed):
            sim = formed(8, seed=seed, loss=0.02)
            sim.slow("n0004", (0.0, 2.0))
            sim.run(40)
            return sim.events

        self.assertEqual(run(18), run(18))


class TwoWorldsTests(SynchronousTestCase):
    def test_daemon_adapter_and_simulator_detect_a_crash_alike(self):
        """The same core behind the Twisted adapter (whole nodes, MemoryNetwork, task.Clock) and in the simulator."""
        n = 5
        bound = suspicion_min(LAN, n) + 3 * LAN.probe_interval
        cluster = SimCluster(n, seed=14, discovery="swim")
        cluster.run(5)
        cluster.crash("node3")
        crashed_at = cluster.clock.seconds()
        daemon_took = None
        while cluster.clock.seconds() - crashed_at < 40:
            cluster.run(0.25)
            if all(node.view.get("node3").state == "dead" for node in cluster.nodes.values()):
                daemon_took = cluster.clock.seconds() - crashed_at
                break
        sim = formed(n, seed=14)
        crashed_at = sim.now
        sim.crash("n0003")
        sim.run(40)
        det = detection(sim.events, "n0003", crashed_at, [m.name for m in sim.up()])
        self.assertIsNotNone(daemon_took, "the daemon path never had the crashed node dead everywhere")
        self.assertIsNotNone(det.dead_everywhere, det)
        for took in (daemon_took, det.dead_everywhere):
            self.assertGreater(took, suspicion_min(LAN, n) - 0.5)
            self.assertLess(took, bound + 0.5)
