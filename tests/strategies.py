"""Hypothesis strategies shared by the tests."""

from hypothesis import strategies as st

from twisted_dhm.storage import Record
from twisted_dhm.versions import Version

node_ids = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,20}", fullmatch=True)
clocks = st.dictionaries(node_ids, st.integers(min_value=1, max_value=2**64 - 1), max_size=6)
hlcs = st.integers(min_value=0, max_value=2**64 - 1)
versions = st.builds(Version.from_mapping, clocks, hlcs)
keys = st.binary(min_size=1, max_size=64)
records = st.builds(
    Record,
    value=st.binary(max_size=256),
    version=versions,
    tombstone=st.booleans(),
    expires_at=st.integers(min_value=0, max_value=2**64 - 1),
)
