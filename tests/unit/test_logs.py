import io
import json

from twisted.logger import LogLevel
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from twisted_dhm.logs import JSONLinesObserver


class JSONLogTests(SynchronousTestCase):
    def test_one_object_per_line(self):
        out = io.StringIO()
        observer = JSONLinesObserver(out, "n1")
        observer({"log_format": "hello {who}", "who": "world", "log_level": LogLevel.warn,
                  "log_namespace": "dhashmap.rest", "log_time": 0, "request_id": "r1"})
        failure = Failure(ZeroDivisionError("division by zero"))
        observer({"log_format": "boom\nmultiline", "log_level": LogLevel.error, "log_time": 1,
                  "log_failure": failure, "log_namespace": "x"})
        lines = out.getvalue().splitlines()
        self.assertEqual(len(lines), 2)
        first, second = (json.loads(line) for line in lines)
        self.assertEqual(first["message"], "hello world")
        self.assertEqual((first["node"], first["subsystem"], first["level"]), ("n1", "dhashmap.rest", "warn"))
        self.assertEqual(first["request_id"], "r1")
        self.assertIn("ZeroDivisionError", second["error"])


class LevelTests(SynchronousTestCase):
    def test_lines_below_the_level_are_dropped_before_any_observer(self):
        from twisted.logger import globalLogPublisher

        from twisted_dhm import logs
        from twisted_dhm.config import load_config

        seen = []
        globalLogPublisher.addObserver(seen.append)
        self.addCleanup(globalLogPublisher.removeObserver, seen.append)
        self.addCleanup(logs.set_level, "debug")
        log = logs.logger("dhashmap.test")
        log.debug("before: debug")  # until the daemon sets a level, everything passes
        logs.set_level(load_config({}, {}, None).log_level)  # the default: info
        log.debug("quiet: debug")
        log.info("kept: info")
        logs.set_level(load_config({}, {"LOG_LEVEL": "warn"}, None).log_level)
        log.info("quiet: info")
        log.warn("kept: warn")
        ours = [e["log_format"] for e in seen if e.get("log_namespace") == "dhashmap.test"]
        self.assertEqual(ours, ["before: debug", "kept: info", "kept: warn"])
