"""Helpers for tests of dhashmap and of its clients."""
