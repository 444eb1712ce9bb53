"""A data directory away longer than the tombstone grace must not rejoin as it is."""

import os

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from twisted_dhm.storage.lastalive import LastAlive


class LastAliveTests(SynchronousTestCase):
    def setUp(self):
        self.dir = self.mktemp()
        os.makedirs(self.dir)  # as the store makes it
        self.clock = Clock()
        self.clock.advance(1_800_000_000)

    def test_a_new_directory_starts_and_is_marked_while_running(self):
        service = LastAlive(self.dir, self.clock, grace=3600, interval=60)
        service.startService()
        self.clock.advance(600)
        service.stopService()
        with open(service.path) as f:
            self.assertAlmostEqual(float(f.read()), self.clock.seconds())

    def test_a_directory_back_within_the_grace_starts(self):
        service = LastAlive(self.dir, self.clock, grace=3600)
        service.startService()
        service.stopService()
        self.clock.advance(3000)
        LastAlive(self.dir, self.clock, grace=3600).startService()

    def test_a_directory_away_longer_than_the_grace_is_refused_with_the_reason(self):
        service = LastAlive(self.dir, self.clock, grace=86400)
        service.startService()
        service.stopService()
        self.clock.advance(3 * 86400)
        with self.assertRaises(SystemExit) as caught:
            LastAlive(self.dir, self.clock, grace=86400).startService()
        message = str(caught.exception)
        self.assertIn("last used 3.0 days ago, longer than --tombstone-grace (1.0 days)", message)
        self.assertIn("Remove the data directory", message)

    def test_a_garbled_note_is_a_clear_error(self):
        service = LastAlive(self.dir, self.clock, grace=60)
        service.startService()
        service.stopService()
        with open(service.path, "w") as f:
            f.write("yesterday")
        with self.assertRaises(SystemExit) as caught:
            LastAlive(self.dir, self.clock, grace=60).check()
        self.assertIn("does not hold a time", str(caught.exception))
