"""Errors from the node's Deferreds become the gRPC status a client expects."""

import grpc
from twisted.internet import defer, task
from twisted.trial.unittest import SynchronousTestCase

from twisted_dhm.api.grpc_api import status_of


class StatusTests(SynchronousTestCase):
    def test_a_deferred_that_timed_out_is_deadline_exceeded(self):
        # Deferred.addTimeout's error: when the server's timer fires before the client's,
        # the call must still end DEADLINE_EXCEEDED, not INTERNAL.
        clock = task.Clock()
        d = defer.Deferred()
        d.addTimeout(0.5, clock)
        failures = []
        d.addErrback(failures.append)
        clock.advance(1)
        self.assertEqual(status_of(failures[0].value).code, grpc.StatusCode.DEADLINE_EXCEEDED)
        self.assertEqual(status_of(defer.CancelledError()).code, grpc.StatusCode.DEADLINE_EXCEEDED)


class LevelTests(SynchronousTestCase):
    def test_a_consistency_level_this_build_does_not_know_is_invalid_argument(self):
        """Protobuf enums are open: level 7 decodes, and must not quietly mean the default."""
        from twisted_dhm.api import kv_pb2
        from twisted_dhm.api.grpc_api import _level

        self.assertEqual(_level(kv_pb2.Quorum(level=kv_pb2.Quorum.LEVEL_ALL)), "all")
        self.assertIsNone(_level(kv_pb2.Quorum()))
        with self.assertRaises(Exception) as ctx:
            _level(kv_pb2.Quorum(level=7))
        self.assertEqual(status_of(ctx.exception).code, grpc.StatusCode.INVALID_ARGUMENT)
