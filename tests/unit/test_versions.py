from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from tests.strategies import versions
from twisted_dhm.versions import (
    MAX_CLOCK_ENTRIES,
    HybridLogicalClock,
    Ordering,
    Version,
    VersionDecodeError,
    decode_version,
    encode_version,
    parse_entity_tags,
    stamp_millis,
    versions_from_tags,
)


class VersionEncodingTests(SynchronousTestCase):
    @given(versions)
    def test_round_trip(self, version):
        raw = encode_version(version)
        self.assertEqual(decode_version(raw), (version, len(raw)))
        self.assertEqual(Version.from_token(version.to_token()), version)

    @given(st.binary(max_size=64))
    def test_garbage_raises_decode_error_only(self, raw):
        try:
            Version.from_token(raw.decode("latin-1"))
        except VersionDecodeError:
            pass

    def test_truncated(self):
        raw = encode_version(Version.from_mapping({"a": 1, "b": 2}, 7))
        for cut in range(len(raw)):
            with self.assertRaises(VersionDecodeError):
                decode_version(raw[:cut])

    def test_unsorted_entries_rejected(self):
        raw = bytearray(encode_version(Version((("a", 1), ("b", 1)), 0)))
        i = raw.index(b"a")
        raw[i] = ord("c")  # now ("c", 1), ("b", 1): out of order
        with self.assertRaises(VersionDecodeError):
            decode_version(bytes(raw))


    def test_duplicate_and_non_utf8_entries_rejected(self):
        raw = encode_version(Version((("a", 1), ("b", 1)), 0)).replace(b"b", b"a")  # ("a", 1) twice
        with self.assertRaises(VersionDecodeError):
            decode_version(raw)
        raw = encode_version(Version((("\u00e9", 1),), 0)).replace("\u00e9".encode(), b"\xff\xfe")
        with self.assertRaises(VersionDecodeError):
            decode_version(raw)

    @given(st.binary(max_size=64))
    def test_garbage_bytes_raise_decode_error_only(self, raw):
        try:
            version, end = decode_version(raw)
        except VersionDecodeError:
            return
        self.assertEqual(encode_version(version), raw[:end])

    def test_node_names_remembered_up_to_a_bound(self):
        # Node ids are remembered, decoded and encoded (a cluster has few); ids from hostile
        # input cannot make that memory grow past its bound.
        from twisted_dhm import versions

        for i in range(versions._MAX_NODE_NAMES + 10):
            version = Version(((f"n{i}", 1),), 0)
            self.assertEqual(decode_version(memoryview(encode_version(Version(version.clock, 0))))[0], version)
        self.assertLessEqual(len(versions._NODE_NAMES), versions._MAX_NODE_NAMES)
        self.assertLessEqual(len(versions._NODE_PREFIXES), versions._MAX_NODE_NAMES)  # encoding's too


# Versions over few nodes with small counters (zeros included): overlaps and ties are common.
_small = st.builds(Version.from_mapping, st.dictionaries(st.sampled_from("abcd"), st.integers(0, 3), max_size=4),
                   st.integers(0, 3))


def _compare_by_dicts(a, b):
    """compare() as it was first written: the reference for the faster one."""
    mine, theirs = dict(a.clock), dict(b.clock)
    less = any(mine.get(n, 0) < theirs.get(n, 0) for n in mine.keys() | theirs.keys())
    greater = any(mine.get(n, 0) > theirs.get(n, 0) for n in mine.keys() | theirs.keys())
    if less and greater:
        return Ordering.CONCURRENT
    return Ordering.BEFORE if less else Ordering.AFTER if greater else Ordering.EQUAL


class FastPathTests(SynchronousTestCase):
    """The one-walk compare and the in-place increment agree with their plain definitions."""

    @given(st.one_of(versions, _small), st.one_of(versions, _small))
    def test_compare_matches_the_dict_definition(self, a, b):
        self.assertEqual(a.compare(b), _compare_by_dicts(a, b))
        self.assertEqual(b.compare(a), _compare_by_dicts(b, a))

    @given(versions, st.sampled_from(["a", "m", "n1", "z", "zz"]), st.integers(0, 2**40))
    def test_increment_matches_the_dict_definition(self, v, node, hlc):
        entries = dict(v.clock)
        entries[node] = max(entries.get(node, 0) + 1, hlc)
        self.assertEqual(v.increment(node, hlc), Version.from_mapping(entries, hlc))
        self.assertEqual(v.increment(node, hlc).compare(v), Ordering.AFTER)


class VectorClockTests(SynchronousTestCase):
    def test_increment_descends(self):
        v1 = Version().increment("n1", 10)
        v2 = v1.increment("n1", 11)
        self.assertGreater(v2.counter("n1"), v1.counter("n1"))
        self.assertEqual(v2.compare(v1), Ordering.AFTER)
        self.assertEqual(v1.compare(v2), Ordering.BEFORE)
        self.assertTrue(v2.wins_over(v1))
        self.assertFalse(v1.wins_over(v2))

    def test_concurrent_resolved_by_hlc_then_bytes(self):
        base = Version().increment("n1", 1)
        a = base.increment("n2", 50)
        b = base.increment("n3", 40)
        self.assertEqual(a.compare(b), Ordering.CONCURRENT)
        self.assertTrue(a.wins_over(b))
        self.assertFalse(b.wins_over(a))
        c = base.increment("n3", 50)
        self.assertNotEqual(a.wins_over(c), c.wins_over(a))

    @given(versions, versions)
    def test_exactly_one_winner_unless_equal(self, a, b):
        if a == b:
            self.assertFalse(a.wins_over(b))
        else:
            self.assertNotEqual(a.wins_over(b), b.wins_over(a))

    @given(versions, versions)
    def test_merge_descends_from_both(self, a, b):
        m = a.merge(b, 0)
        self.assertIn(m.compare(a), (Ordering.AFTER, Ordering.EQUAL))
        self.assertIn(m.compare(b), (Ordering.AFTER, Ordering.EQUAL))


    def test_counters_are_hybrid(self):
        """A node that forgot a key's history still supersedes what it wrote before."""
        old = Version().increment("n1", 1000).increment("n1", 1001).increment("n2", 1002)
        fresh = Version().increment("n1", 2000)
        self.assertGreaterEqual(fresh.counter("n1"), 2000)
        self.assertGreater(fresh.counter("n1"), old.counter("n1"))
        self.assertTrue(fresh.wins_over(old))
        self.assertEqual(Version((("n1", 5000),), 9).increment("n1", 10).counter("n1"), 5001)


    def test_a_full_clock_drops_its_oldest_entry_and_the_write_still_wins(self):
        """A key whose clock has the most entries a version may carry (accepted from a peer, or
        grown over years of members coming and going) stays writable: the entry with the
        smallest counter goes, the result encodes, and it wins over the version it replaced."""
        full = Version(tuple((f"m{i:03d}", 100 + i) for i in range(MAX_CLOCK_ENTRIES)), 500)
        newer = full.increment("n1", 1000)
        self.assertEqual(len(newer.clock), MAX_CLOCK_ENTRIES)
        self.assertNotIn("m000", dict(newer.clock))
        self.assertEqual(newer.counter("n1"), 1000)
        self.assertEqual(decode_version(encode_version(newer))[0], newer)
        self.assertTrue(newer.wins_over(full))
        self.assertFalse(full.wins_over(newer))
        again = full.increment("m001", 1000)  # a node already in the clock: nothing to drop
        self.assertEqual(len(again.clock), MAX_CLOCK_ENTRIES)
        self.assertEqual(again.compare(full), Ordering.AFTER)
        merged = full.merge(Version(tuple((f"x{i:03d}", 1) for i in range(10)), 0), 0)
        self.assertEqual(len(merged.increment("n1", 1000).clock), MAX_CLOCK_ENTRIES)


class HLCTests(SynchronousTestCase):
    def test_monotonic_even_when_clock_stands_still_or_goes_back(self):
        clock = Clock()
        clock.advance(1000)
        hlc = HybridLogicalClock(clock)
        stamps = [hlc.now() for _ in range(5)]
        clock.advance(-10)  # the physical clock steps back
        stamps += [hlc.now() for _ in range(5)]
        self.assertEqual(stamps, sorted(set(stamps)))
        self.assertEqual(stamp_millis(stamps[0]), 1_000_000)

    def test_follows_physical_time(self):
        clock = Clock()
        hlc = HybridLogicalClock(clock)
        hlc.now()
        clock.advance(2.5)
        self.assertEqual(stamp_millis(hlc.now()), 2500)

    def test_far_future_stamps_are_not_followed(self):
        clock = Clock()
        clock.advance(1000)
        hlc = HybridLogicalClock(clock)
        hlc.observe(2**64 - 1)
        hlc.observe((1000 + 3600) * 1000 << 16)  # an hour ahead
        self.assertLess(stamp_millis(hlc.now()), 1_000_000 + 60_001)
        hlc.observe((1000 + 30) * 1000 << 16)  # 30 s ahead: within the drift allowed
        self.assertGreater(stamp_millis(hlc.now()), 1_000_000 + 29_999)

    def test_observe_moves_past_remote(self):
        clock = Clock()
        hlc = HybridLogicalClock(clock)
        remote = (5000 << 16) + 3
        hlc.observe(remote)
        self.assertGreater(hlc.now(), remote)


class EntityTagTests(SynchronousTestCase):
    def test_parse(self):
        self.assertIsNone(parse_entity_tags(" * "))
        self.assertEqual(parse_entity_tags('"a", W/"b", junk, "c"'), ["a", "W/b", "c"])

    def test_weak_and_bad_tags_match_nothing(self):
        v = Version().increment("n1", 1)
        token = v.to_token()
        self.assertEqual(versions_from_tags([token, "W/" + token, "!!"]), [v])
