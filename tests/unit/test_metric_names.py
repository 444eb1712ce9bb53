"""Metric names follow Prometheus' conventions: a ``dhashmap_`` prefix, base units as suffixes."""

import re

from twisted.trial.unittest import SynchronousTestCase

from twisted_dhm.testing.simulation import SimCluster

# Named before this check existed and promised by docs/membership.md ("dhashmap_gossip_bytes_*"),
# so kept: the convention would be dhashmap_gossip_sent_bytes_total.
LEGACY = {"dhashmap_gossip_bytes_sent", "dhashmap_gossip_bytes_received"}


class MetricNameTests(SynchronousTestCase):
    def families(self):
        cluster = SimCluster(2, discovery="swim")
        cluster.run(5)
        return list(cluster.nodes["node1"].metrics.registry.collect())

    def test_names_and_units(self):
        families = self.families()
        names = {f.name for f in families}
        # Every subsystem the simulator runs shows up: requests, storage, members, hints, gossip, rebalancing.
        for expected in ("dhashmap_requests", "dhashmap_request_duration_seconds", "dhashmap_storage_keys",
                         "dhashmap_members", "dhashmap_hints_queued", "dhashmap_gossip_probes",
                         "dhashmap_partitions_held"):
            self.assertIn(expected, names)
        for family in families:
            name = family.name
            if name.startswith("process_"):
                continue
            self.assertRegex(name, r"^dhashmap_[a-z][a-z0-9_]*[a-z0-9]$")
            self.assertTrue(family.documentation, f"{name} has no help text")
            if name in LEGACY:
                continue
            for unit in ("bytes", "seconds"):
                if re.search(rf"(^|_){unit}(_|$)", name):
                    self.assertTrue(name.endswith("_" + unit), f"{name}: the unit goes last (before _total)")
            self.assertNotRegex(name, r"_(ms|milliseconds|kb|mb|kib|mib|minutes|hours)(_|$)", "base units only")
            if family.type == "counter":
                # prometheus_client adds _total to a counter's samples; a name ending in it would double it.
                self.assertFalse(name.endswith("_total"), name)
                self.assertTrue(all(s.name.endswith(("_total", "_created")) for s in family.samples), name)
