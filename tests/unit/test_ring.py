from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from twisted_dhm.ring import PartitionTable, key_hash, partition_of

node_names = st.lists(
    st.from_regex(r"[a-z][a-z0-9-]{0,15}", fullmatch=True), min_size=1, max_size=40, unique=True
)



class HashTests(SynchronousTestCase):
    def test_xxh64_vectors(self):
        # The empty string and "a" are xxHash's own reference values for XXH64, seed 0.
        self.assertEqual(key_hash(b""), 0xEF46DB3751D8E999)
        self.assertEqual(key_hash(b"a"), 0xD24EC4F1A98C6E5B)
        self.assertEqual(partition_of(b"", 1024), 0xEF46DB3751D8E999 % 1024)

    def test_docs_vectors_are_current(self):
        from pathlib import Path

        doc = (Path(__file__).parents[2] / "docs" / "partitioning.md").read_text()
        for key in [b"", b"a", b"user/42", b"\x00\xff", "ключ".encode(), b"x" * 100]:
            line = f"| `{key.hex()}` | `{key_hash(key):016x}` | {partition_of(key, 1024)} |"
            self.assertIn(line, doc)


class PartitionTableTests(SynchronousTestCase):
    @settings(max_examples=40, deadline=None)
    @given(node_names, st.integers(min_value=1, max_value=5))
    def test_every_partition_has_n_distinct_owners(self, nodes, n):
        table = PartitionTable({node: 1 for node in nodes}, partitions=256, replicas=n)
        for p in range(256):
            owners = table.preference_list(p)
            self.assertEqual(len(owners), min(n, len(nodes)))
            self.assertEqual(len(set(owners)), len(owners))
            self.assertEqual(tuple(table.walk(p))[: len(owners)], owners)
            self.assertEqual(sorted(table.walk(p)), sorted(nodes))

    @settings(max_examples=30, deadline=None)
    @given(st.lists(st.from_regex(r"[a-z][a-z0-9-]{0,15}", fullmatch=True), min_size=3, max_size=30,
                    unique=True))
    def test_no_node_owns_more_than_a_bounded_share(self, nodes):
        table = PartitionTable({node: 1 for node in nodes})
        fair = 1024 * 3 / len(nodes)
        for node in nodes:
            self.assertLess(len(table.owned_by(node)), 1.6 * fair + 8, node)

    @settings(max_examples=30, deadline=None)
    @given(st.lists(st.from_regex(r"[a-z][a-z0-9-]{0,15}", fullmatch=True), min_size=3, max_size=30,
                    unique=True), st.from_regex(r"new-[a-z0-9]{1,8}", fullmatch=True))
    def test_adding_a_node_moves_about_its_share_and_nothing_else(self, nodes, newcomer):
        before = PartitionTable({node: 1 for node in nodes})
        after = PartitionTable({node: 1 for node in [*nodes, newcomer]})
        moved = 0
        for p in range(1024):
            old, new = set(before.preference_list(p)), set(after.preference_list(p))
            gained = new - old
            self.assertLessEqual(gained, {newcomer}, "only the new node gains partitions")
            moved += len(gained)
        share = moved / (1024 * 3)
        expected = 1 / (len(nodes) + 1)
        self.assertLess(abs(share - expected), 0.5 * expected + 0.01, (share, expected))

    def test_weights(self):
        table = PartitionTable({"small": 1, "big": 3, "c": 1, "d": 1}, replicas=1)
        self.assertGreater(len(table.owned_by("big")), 2 * len(table.owned_by("small")))

    def test_fewer_nodes_than_replicas(self):
        table = PartitionTable({"only": 1}, replicas=3)
        self.assertEqual(table.preference_list(7), ("only",))
        self.assertEqual(PartitionTable({}).preference_list(0), ())

    def test_deterministic(self):
        a = PartitionTable({"x": 1, "y": 2, "z": 1}).as_dict()
        b = PartitionTable({"z": 1, "y": 2, "x": 1}).as_dict()
        self.assertEqual(a, b)


class RoutingReadTargetsTests(SynchronousTestCase):
    """Read targets are kept per partition until the members change (gRPC's thread reads them too)."""

    def test_targets_follow_member_states_and_old_answers_are_never_read_again(self):
        from twisted_dhm.cluster.routing import Routing
        from twisted_dhm.membership import DEAD, Member, MembershipView

        view = MembershipView(Member("a", "127.0.0.1", 7000))
        for node in ("b", "c"):
            view.upsert(Member(node, "127.0.0.1", 7000))
        routing = Routing(view, partitions=16, replicas=3)
        preference = routing.preference(b"k")
        self.assertEqual(sorted(preference), ["a", "b", "c"])
        self.assertEqual(routing.read_targets(b"k"), (3, preference))
        before = routing._reads
        view.set_state("b", DEAD)
        self.assertEqual(routing.read_targets(b"k"), (3, tuple(n for n in preference if n != "b")))
        # Replaced, not cleared: a reader in another thread that worked from the old members
        # can only have written into the cache that is no longer used.
        self.assertIsNot(routing._reads, before)
        self.assertEqual(before[routing.table.partition(b"k")], (3, preference))
