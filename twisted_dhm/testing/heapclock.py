"""A ``task.Clock`` for simulations with many thousands of pending calls.

``twisted.internet.task.Clock`` keeps its calls in a list and sorts the whole
list on every ``callLater`` and after every call it runs: fine for a unit test,
quadratic for a simulator with a thousand nodes and tens of thousands of
packets in flight.  ``HeapClock`` has the same interface and semantics
(``IReactorTime``; ``advance`` moves time first, then runs every call due at or
before the new time, including calls those calls schedule; cancellable,
resettable twisted ``DelayedCall`` handles) on a binary heap with lazy deletion.

Calls due at the same time run in the order they were scheduled, as with
``task.Clock``; for a call rescheduled by ``reset``/``delay`` onto exactly the
time of another call, the tie may be broken differently.

Two additions for simulators: ``schedule(when, f, *args)`` adds a call at an
absolute time without a handle (cheaper; it cannot be cancelled), and
``run_until(when)`` runs calls one by one with the clock showing each call's own
time, which is what a discrete-event simulation wants (``advance`` shows the
end time to every call it runs, as ``task.Clock`` does).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Sequence

from twisted.internet.base import DelayedCall
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from zope.interface import implementer

# A heap entry: (time, seq, func, args, call).  ``call`` is the DelayedCall for
# ``callLater`` entries (func/args unused) and None for ``schedule`` entries.
_Entry = tuple[float, int, object, tuple, "DelayedCall | None"]


@implementer(IReactorTime)
class HeapClock:
    rightNow = 0.0

    def __init__(self, start: float = 0.0) -> None:
        self.rightNow = start
        self._heap: list[_Entry] = []
        self._seq = 0
        self._dead = 0  # cancelled entries still in the heap

    # -- IReactorTime ---------------------------------------------------------

    def seconds(self) -> float:
        return self.rightNow

    def callLater(self, delay: float, callable: Callable[..., object], *args: object, **kw: object) -> IDelayedCall:
        call = DelayedCall(self.rightNow + delay, callable, args, kw, self._cancelled, self._reset, self.seconds)
        self._push_call(call)
        return call

    def getDelayedCalls(self) -> Sequence[IDelayedCall]:
        """Pending ``callLater`` calls, soonest first (``schedule`` entries have no handle)."""
        seen: dict[int, tuple[float, int, DelayedCall]] = {}
        for when, seq, _f, _a, call in self._heap:
            if call is not None and call.active() and when == call.time and id(call) not in seen:
                seen[id(call)] = (call.getTime(), seq, call)
        return [call for _t, _s, call in sorted(seen.values(), key=lambda x: (x[0], x[1]))]

    # -- task.Clock's driving interface ----------------------------------------

    def advance(self, amount: float) -> None:
        """Move time forward by ``amount``, then run every call due by then (as ``task.Clock``)."""
        self.rightNow += amount
        self._run(self.rightNow, step=False)

    def pump(self, timings: Iterable[float]) -> None:
        for amount in timings:
            self.advance(amount)

    # -- simulator additions ---------------------------------------------------

    def schedule(self, when: float, func: Callable[..., object], *args: object) -> None:
        """Run ``func(*args)`` at absolute time ``when`` (not before now); no handle, no cancel."""
        self._seq += 1
        heapq.heappush(self._heap, (max(when, self.rightNow), self._seq, func, args, None))

    def run_until(self, when: float) -> None:
        """Run due calls one at a time, each seeing its own time, then stop at ``when``."""
        self._run(when, step=True)
        if when > self.rightNow:
            self.rightNow = when

    def next_time(self) -> float | None:
        """Time of the next pending entry (possibly a cancelled one), or None if idle."""
        return self._heap[0][0] if self._heap else None

    def pending(self) -> int:
        """Heap entries, including not-yet-collected cancelled ones (a load figure for simulators)."""
        return len(self._heap)

    # -- internals -------------------------------------------------------------

    def _push_call(self, call: DelayedCall) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (call.time, self._seq, None, (), call))

    def _cancelled(self, call: DelayedCall) -> None:
        self._dead += 1
        if self._dead > 1024 and self._dead * 2 > len(self._heap):
            self._heap = [e for e in self._heap if e[4] is None or (e[4].active() and e[0] == e[4].time)]
            heapq.heapify(self._heap)
            self._dead = 0

    def _reset(self, call: DelayedCall) -> None:
        # Only called when the call moved earlier; its old entry becomes stale
        # (its time no longer equals call.time) and is skipped when popped.
        self._push_call(call)

    def _run(self, until: float, step: bool) -> None:
        heap = self._heap
        pop = heapq.heappop
        while heap and heap[0][0] <= until:
            when, _seq, func, args, call = pop(heap)
            if step and when > self.rightNow:
                self.rightNow = when
            if call is None:
                func(*args)  # type: ignore[operator]
                continue
            if call.cancelled or call.called or when != call.time:
                continue  # cancelled, already run, or superseded by a reset entry
            if call.delayed_time:
                call.activate_delay()
                self._push_call(call)
                continue
            call.called = 1
            call.func(*call.args, **call.kw)
