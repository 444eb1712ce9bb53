"""The gRPC bridge's hand-off between grpc.aio's thread and the reactor, without threads."""

from twisted.trial.unittest import SynchronousTestCase

from twisted_dhm.api.grpc_api import _Batches


class BatchesTests(SynchronousTestCase):
    def setUp(self):
        self.wakes = []
        self.batches = _Batches(self.wakes.append)

    def test_one_wake_up_carries_everything_posted_before_it_runs(self):
        ran = []
        for i in range(3):
            self.batches.post(lambda i=i: ran.append(i))
        self.assertEqual(len(self.wakes), 1)
        self.wakes.pop()()
        self.assertEqual(ran, [0, 1, 2])

    def test_a_post_after_a_drain_wakes_again(self):
        ran = []
        self.batches.post(lambda: ran.append("a"))
        self.wakes.pop()()
        self.batches.post(lambda: ran.append("b"))
        self.assertEqual(len(self.wakes), 1)
        self.wakes.pop()()
        self.assertEqual(ran, ["a", "b"])

    def test_a_post_during_a_drain_is_never_lost(self):
        ran = []

        def first():
            ran.append("first")
            self.batches.post(lambda: ran.append("posted while draining"))

        self.batches.post(first)
        self.wakes.pop()()
        # Run by the drain already under way, or by a wake-up it asked for: either way it runs.
        while self.wakes:
            self.wakes.pop()()
        self.assertEqual(ran, ["first", "posted while draining"])
