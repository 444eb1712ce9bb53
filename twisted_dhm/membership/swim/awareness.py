"""Lifeguard's local health awareness (memberlist's awareness.go)."""

from __future__ import annotations


class Awareness:
    """Lifeguard's local health score: 0 is healthy, up to ``max_multiplier - 1``.

    A node that misses acks and nacks is probably the slow one itself (CPU
    starved, dropping packets), so it stretches its own probe interval and
    timeout by ``score + 1`` rather than accusing healthy peers.
    """

    __slots__ = ("max_multiplier", "score")

    def __init__(self, max_multiplier: int) -> None:
        self.max_multiplier = max_multiplier
        self.score = 0

    def apply_delta(self, delta: int) -> None:
        self.score = min(max(self.score + delta, 0), self.max_multiplier - 1)

    def scale(self, timeout: float) -> float:
        return timeout * (self.score + 1)
