"""Lifeguard's suspicion timer maths (memberlist's suspicion.go).

Pure functions of numbers and ``now``: the core owns the actual timer and asks
:meth:`Suspicion.deadline` when to fire, so the maths is testable on its own.
"""

from __future__ import annotations

import math
from typing import Any


def suspicion_timeout(suspicion_mult: int, n: int, interval: float) -> float:
    """The minimum suspicion timeout: ``mult * max(1, log10(n)) * probe_interval``.

    Grows with the cluster because news takes about log(n) gossip rounds to
    reach everyone, and the suspect needs to hear it to refute.
    """
    node_scale = max(1.0, math.log10(max(1, n)))
    return suspicion_mult * node_scale * interval


class Suspicion:
    """One member's suspicion: starts at ``max_timeout`` and shrinks towards ``min_timeout``
    as independent members confirm it, ``timeout = max - (max-min) * log(c+1) / log(k+1)``.

    With ``k < 1`` (too few members to expect confirmations, or Lifeguard off)
    the timeout is simply ``min_timeout`` and confirmations change nothing.
    """

    __slots__ = ("k", "n", "min_timeout", "max_timeout", "start", "_confirmations", "timer")

    def __init__(self, from_node: str, k: int, min_timeout: float, max_timeout: float, start: float) -> None:
        self.k = k
        self.n = 0
        self.min_timeout = min_timeout
        self.max_timeout = max_timeout
        self.start = start
        # The accuser who started the suspicion does not count as a confirmation.
        self._confirmations = {from_node}
        self.timer: Any = None  # the core's timer handle

    def timeout(self) -> float:
        if self.k < 1:
            return self.min_timeout
        if self.n == 0:
            return self.max_timeout
        frac = math.log(self.n + 1) / math.log(self.k + 1)
        raw = self.max_timeout - frac * (self.max_timeout - self.min_timeout)
        return max(raw, self.min_timeout)

    def deadline(self) -> float:
        return self.start + self.timeout()

    def confirm(self, from_node: str) -> bool:
        """Count an independent accuser; True if it was new (and the news is worth re-gossiping)."""
        if self.n >= self.k or from_node in self._confirmations:
            return False
        self._confirmations.add(from_node)
        self.n += 1
        return True
