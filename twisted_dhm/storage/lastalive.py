"""Refuse to start on a data directory older than the tombstone grace period.

Deletes are tombstones, purged everywhere after ``--tombstone-grace``.  A node that was away
for longer still holds the values those tombstones deleted; once it is back, rebalancing and
anti-entropy would copy them to the other replicas as if they were new (Cassandra's rule:
never bring back a node down longer than ``gc_grace_seconds``).  So the node notes in its data
directory, every minute, that it is alive, and refuses to start when that note is older than
the grace period: the operator removes the directory (the node then pulls its partitions from
the others) or, knowing no key was deleted meanwhile, removes just the note.
"""

from __future__ import annotations

import os

from twisted.application.service import Service
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall

from twisted_dhm import logs

log = logs.logger("dhashmap.storage")

FILE = "last-alive"


def _human(seconds: float) -> str:
    for unit, size in (("days", 86400), ("hours", 3600), ("minutes", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.0f} seconds"


class LastAlive(Service):
    name = "last-alive"

    def __init__(self, data_dir: str, clock: IReactorTime, grace: float, interval: float = 60.0) -> None:
        self.path = os.path.join(data_dir, FILE)
        self.clock = clock
        self.grace = grace
        self._loop = LoopingCall(self.mark)
        self._loop.clock = clock
        self.interval = interval

    def check(self) -> None:
        """Raise SystemExit with the reason when the directory is too old to rejoin."""
        try:
            with open(self.path) as f:
                raw = f.read().strip()
        except (FileNotFoundError, NotADirectoryError):
            return  # a new directory, one from before this check existed, or no directory (the store says)
        except OSError as e:
            raise SystemExit(f"dhashmap: cannot start: cannot read {self.path}: {e.strerror}") from None
        try:
            last = float(raw)
        except ValueError:
            raise SystemExit(f"dhashmap: cannot start: {self.path} does not hold a time ({raw[:40]!r}); "
                             "remove it if the directory is otherwise sound") from None
        away = self.clock.seconds() - last
        if away > self.grace:
            raise SystemExit(
                f"dhashmap: cannot start: this data directory was last used {_human(away)} ago, longer than "
                f"--tombstone-grace ({_human(self.grace)}): deletes made meanwhile may have been purged on the "
                f"other nodes, and the values here would come back. Remove the data directory (the node then "
                f"copies its partitions from the others), or remove {self.path} if no key was deleted meanwhile."
            )

    def mark(self) -> None:
        tmp = self.path + ".tmp"
        try:
            with open(tmp, "w") as f:
                f.write(f"{self.clock.seconds():.3f}\n")
            os.replace(tmp, self.path)
        except OSError as e:
            log.warn("could not note that this node is alive in {path}: {e}", path=self.path, e=e.strerror)

    def startService(self) -> None:
        self.check()
        super().startService()
        # The first note after one interval: the store creates the directory meanwhile.
        self._loop.start(self.interval, now=False)

    def stopService(self) -> None:
        super().stopService()
        if self._loop.running:
            self._loop.stop()
        self.mark()
