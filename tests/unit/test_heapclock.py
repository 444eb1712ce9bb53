"""HeapClock behaves like twisted's task.Clock (which it replaces in big simulations)."""

import random

from twisted.internet import error
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from twisted_dhm.testing.heapclock import HeapClock


class HeapClockTests(SynchronousTestCase):
    def test_provides_ireactortime(self):
        verifyObject(IReactorTime, HeapClock())

    def test_advance_moves_time_then_runs_due_calls_in_order(self):
        clock = HeapClock()
        seen = []
        clock.callLater(2, lambda: seen.append(("b", clock.seconds())))
        clock.callLater(1, lambda: seen.append(("a", clock.seconds())))
        clock.callLater(3, lambda: seen.append(("c", clock.seconds())))
        clock.advance(2)
        self.assertEqual(seen, [("a", 2), ("b", 2)], "task.Clock shows the end time to every call")
        self.assertEqual(clock.seconds(), 2)
        clock.advance(1)
        self.assertEqual(seen[-1], ("c", 3))

    def test_calls_scheduled_by_a_call_run_in_the_same_advance_when_due(self):
        clock = HeapClock()
        seen = []
        clock.callLater(1, lambda: clock.callLater(0, seen.append, "nested"))
        clock.advance(1)
        self.assertEqual(seen, ["nested"])

    def test_ties_run_in_scheduling_order(self):
        clock = HeapClock()
        seen = []
        for i in range(10):
            clock.callLater(1, seen.append, i)
        clock.advance(1)
        self.assertEqual(seen, list(range(10)))

    def test_cancel_reset_delay_and_handle_state(self):
        clock = HeapClock()
        seen = []
        a = clock.callLater(5, seen.append, "a")
        b = clock.callLater(5, seen.append, "b")
        c = clock.callLater(5, seen.append, "c")
        a.cancel()
        self.assertRaises(error.AlreadyCancelled, a.cancel)
        b.reset(1)  # earlier
        c.delay(3)  # later: 8
        self.assertEqual([call.getTime() for call in clock.getDelayedCalls()], [1, 8])
        clock.advance(1)
        self.assertEqual(seen, ["b"])
        self.assertFalse(b.active())
        self.assertRaises(error.AlreadyCalled, b.reset, 1)
        c.reset(2)  # later again than now+... : from t=1 to t=3, earlier than 8
        clock.advance(1.5)
        self.assertEqual(seen, ["b"])
        clock.advance(0.5)
        self.assertEqual(seen, ["b", "c"])
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_reset_later_fires_later_not_twice(self):
        clock = HeapClock()
        seen = []
        call = clock.callLater(1, seen.append, "x")
        call.reset(4)
        clock.advance(1)
        self.assertEqual(seen, [])
        self.assertTrue(call.active())
        clock.advance(3)
        self.assertEqual(seen, ["x"])
        clock.advance(10)
        self.assertEqual(seen, ["x"])

    def test_run_until_shows_each_call_its_own_time(self):
        clock = HeapClock()
        seen = []
        clock.callLater(1, lambda: seen.append(clock.seconds()))
        clock.schedule(2.5, lambda: seen.append(clock.seconds()))
        clock.run_until(10)
        self.assertEqual(seen, [1, 2.5])
        self.assertEqual(clock.seconds(), 10)

    def test_many_cancellations_are_collected(self):
        clock = HeapClock()
        calls = [clock.callLater(i, lambda: None) for i in range(5000)]
        for call in calls[:4000]:
            call.cancel()
        self.assertLess(clock.pending(), 3000)
        self.assertEqual(len(clock.getDelayedCalls()), 1000)

    def test_same_firing_order_as_task_clock_for_random_programs(self):
        """Random callLater/cancel/reset/delay programs (no rescheduled ties) run identically on both clocks."""
        for seed in range(30):
            logs = []
            for clock in (Clock(), HeapClock()):
                prog = random.Random(seed)
                log = []
                handles = []

                def fire(tag, clock=clock, log=log, handles=handles, prog=prog):
                    log.append((tag, round(clock.seconds(), 9)))
                    if prog.random() < 0.3:
                        handles.append(clock.callLater(prog.random() * 3, fire, tag + "'"))

                for i in range(40):
                    handles.append(clock.callLater(prog.random() * 10, fire, str(i)))
                for _ in range(60):
                    op = prog.random()
                    live = [h for h in handles if h.active()]
                    if live and op < 0.2:
                        prog.choice(live).cancel()
                    elif live and op < 0.35:
                        prog.choice(live).reset(prog.random() * 10)
                    elif live and op < 0.45:
                        prog.choice(live).delay(prog.random() * 2)
                    else:
                        clock.advance(prog.random() * 0.7)
                clock.advance(100)
                logs.append(log)
            self.assertEqual(logs[0], logs[1], f"seed {seed}")
            self.assertGreater(len(logs[0]), 20)
