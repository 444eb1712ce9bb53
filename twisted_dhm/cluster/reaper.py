"""Reclaiming deletes: tombstones (and expired values) leave the disk after a grace period.

A tombstone has to outlive every stale copy of the value it deleted, or that copy could
come back through read repair or a hint.  Stale copies are fixed by hints and read repair
while nodes are away for less than the grace period (``--tombstone-grace``, default one
day, as Cassandra's ``gc_grace_seconds``), so after it a tombstone is safe to drop.  An
expired value is dropped by the same rule, counted from its expiry.

The reaper walks the store in slices (``batch`` entries a tick, resuming where it left
off), so a large store never stalls the reactor, and it re-reads each record just before
removing it: a key written since the scan is left alone.
"""

from __future__ import annotations

from twisted.application.service import Service
from twisted.internet.defer import Deferred, gatherResults, maybeDeferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure

from twisted_dhm import logs
from twisted_dhm.storage import IStorageEngine
from twisted_dhm.storage.interface import CorruptRecord
from twisted_dhm.versions import stamp_millis

log = logs.logger("dhashmap.reaper")


def reclaimable_since(tombstone: bool, expires_at: int, hlc: int) -> int | None:
    """When (ms) a record stopped being live: a delete's time, an expiry; ``None`` if live."""
    if tombstone:
        return stamp_millis(hlc)
    if expires_at:
        return expires_at
    return None


class Reaper(Service):
    name = "reaper"

    def __init__(self, engine: IStorageEngine, clock: IReactorTime, grace: float = 86400.0,
                 interval: float = 10.0, batch: int = 1000) -> None:
        self.engine = engine
        self.clock = clock
        self.grace_ms = int(grace * 1000)
        self.batch = batch
        self.reclaimed = 0
        self._after: bytes | None = None
        self._loop = LoopingCall(self._pass)
        self._loop.clock = clock
        self.interval = interval

    def startService(self) -> None:
        super().startService()
        self._loop.start(self.interval, now=False)

    def stopService(self) -> None:
        super().stopService()
        if self._loop.running:
            self._loop.stop()

    def _pass(self) -> Deferred:
        # A pass that fails must not end the loop (a LoopingCall stops at its first error).
        return maybeDeferred(self.run_once).addErrback(
            lambda f: log.failure("tombstone reaping failed; next pass in {s}s", f, s=self.interval))

    def run_once(self) -> Deferred:
        """Examine the next slice of the store; fires when its removals are durable."""
        entries = self.engine.scan(b"", self._after, self.batch)
        self._after = entries[-1].key if len(entries) == self.batch else None  # wrap around at the end
        cutoff = int(self.clock.seconds() * 1000) - self.grace_ms
        removals = []
        for entry in entries:
            since = reclaimable_since(entry.tombstone, entry.expires_at, entry.hlc)
            if since is None or since > cutoff:
                continue
            try:
                record = self.engine.latest(entry.key)
            except CorruptRecord as e:
                # Its header (checked apart) says it is reclaimable, its body no longer decodes:
                # remove it, as it would have been; were it wrong, the other replicas' copy
                # comes back by anti-entropy.
                log.warn("record for {key!r} is corrupt; reclaimed as its header says: {e}", key=entry.key, e=e)
                removals.append(self.engine.write(entry.key, None, background=True))
                continue
            if record is None:
                continue
            since = reclaimable_since(record.tombstone, record.expires_at, record.version.hlc)
            if since is not None and since <= cutoff:
                removals.append(self.engine.write(entry.key, None, background=True))
        if not removals:
            return succeed(0)

        def done(results: list) -> int:
            self.reclaimed += len(results)
            return len(results)

        def failed(failure: Failure) -> int:
            # Keep the loop alive: what failed is still there and is tried again next pass.
            log.warn("could not purge tombstones: {e}", e=failure.getErrorMessage())
            return 0

        return gatherResults(removals, consumeErrors=True).addCallbacks(done, failed)
