import io

from twisted.trial.unittest import SynchronousTestCase

from twisted_dhm.config import SETTINGS, ConfigError, load_config, settings_markdown
from twisted_dhm.server import translate_args
from twisted_dhm.tap import Options


class PrecedenceTests(SynchronousTestCase):
    def yaml(self, text):
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_defaults(self):
        c = load_config({}, {}, None)
        self.assertEqual((c.port, c.bind, c.storage, c.log_format), (8080, "0.0.0.0", "lmdb", "text"))
        self.assertEqual(c.data_dir, f"./data/{c.node_id}")
        self.assertEqual(c.advertise, "127.0.0.1")

    def test_flags_over_env_over_file_over_defaults(self):
        path = self.yaml("node_id: from-file\nport: 1001\nbind: 10.0.0.1\nmax-value-size: 1MiB\n")
        env = {"PORT": "1002", "BIND": "10.0.0.2"}
        c = load_config({"bind": "10.0.0.3"}, env, path)
        self.assertEqual(c.node_id, "from-file")
        self.assertEqual(c.port, 1002)
        self.assertEqual(c.bind, "10.0.0.3")
        self.assertEqual(c.advertise, "10.0.0.3")
        self.assertEqual(c.max_value_size, 1 << 20)
        self.assertEqual(c.data_dir, "./data/from-file")

    def test_empty_env_var_is_unset(self):
        self.assertEqual(load_config({}, {"PORT": ""}, None).port, 8080)

    def test_bad_values_name_the_setting_and_source(self):
        cases = [
            ({"port": "eighty"}, {}, "--port"),
            ({}, {"PORT": "70000"}, "$PORT"),
            ({"storage": "floppy"}, {}, "--storage: must be one of lmdb, memory"),
            ({}, {"DISCOVERY_MODE": "carrier-pigeon"}, "$DISCOVERY_MODE"),
            ({"node_id": "bad id!"}, {}, "--node-id"),
            ({"max_value_size": "lots"}, {}, "--max-value-size"),
            ({"http_idle_timeout": "0"}, {}, "--http-idle-timeout"),
            ({"bind": ""}, {}, "--bind"),
        ]
        for flags, env, expected in cases:
            with self.assertRaises(ConfigError) as ctx:
                load_config(flags, env, None)
            self.assertIn(expected, str(ctx.exception))
            self.assertNotIn("\n", str(ctx.exception))

    def test_yaml_errors(self):
        with self.assertRaises(ConfigError) as ctx:
            load_config({}, {}, self.yaml("node_id: a\nprot: 80\n"))
        self.assertIn("unknown setting 'prot'", str(ctx.exception))
        with self.assertRaises(ConfigError) as ctx:
            load_config({}, {}, self.yaml("port: 99999\n"))
        self.assertIn(": port: must be an integer", str(ctx.exception))
        with self.assertRaises(ConfigError):
            load_config({}, {}, self.yaml("- a list\n"))
        with self.assertRaises(ConfigError):
            load_config({}, {}, self.yaml("port: [unclosed\n"))
        with self.assertRaises(ConfigError) as ctx:
            load_config({}, {}, "/nonexistent/config.yaml")
        self.assertIn("cannot read", str(ctx.exception))
        for text, expected in (("weight: .inf\n", "weight: must be an integer"),
                               ("weight: 7.9\n", "weight: must be an integer")):
            with self.assertRaises(ConfigError) as ctx:
                load_config({}, {}, self.yaml(text))
            self.assertIn(expected, str(ctx.exception))
        self.assertEqual(load_config({}, {}, self.yaml("weight: 7.0\n")).weight, 7)
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(b'cluster: "\xff\xfe"\n')
        with self.assertRaises(ConfigError) as ctx:
            load_config({}, {}, path)
        self.assertIn("is not UTF-8 text", str(ctx.exception))

    def test_sizes_and_durations(self):
        c = load_config({"max_key_size": "2KiB", "http_idle_timeout": "2m", "storage": "memory"},
                        {"LMDB_MAP_SIZE": "2GiB"})
        self.assertEqual((c.max_key_size, c.http_idle_timeout, c.lmdb_map_size), (2048, 120.0, 2 << 30))
        self.assertEqual(load_config({"http_idle_timeout": "1500ms"}, {}).http_idle_timeout, 1.5)

    def test_rereplication_must_come_before_tombstones_are_purged(self):
        with self.assertRaises(ConfigError) as ctx:
            load_config({"rereplicate_after": "48h"}, {})
        self.assertIn("--rereplicate-after must be shorter than --tombstone-grace", str(ctx.exception))
        self.assertEqual(load_config({"rereplicate_after": "48h", "tombstone_grace": "72h"}, {}).rereplicate_after,
                         2 * 86400)

    def test_keys_lmdb_cannot_hold_are_refused_at_start(self):
        self.assertEqual(load_config({}, {}).max_key_size, 446)
        with self.assertRaises(ConfigError) as ctx:
            load_config({"max_key_size": "4096"}, {})
        self.assertIn("at most 446 bytes with --storage lmdb", str(ctx.exception))
        self.assertEqual(load_config({"max_key_size": "4096", "storage": "memory"}, {}).max_key_size, 4096)

    def test_settings_table_documents_everything(self):
        table = settings_markdown()
        for s in SETTINGS:
            self.assertIn(s.flag, table)
            self.assertIn(s.env, table)


class OptionsTests(SynchronousTestCase):
    def parse(self, args, env=None):
        options = Options()
        options.environ = env or {}
        options.stderr = io.StringIO()
        options.parseOptions(args)
        return options

    def test_every_setting_is_a_flag(self):
        options = self.parse(["--node-id", "n9", "--port", "9", "--storage", "memory"])
        self.assertEqual((options.config.node_id, options.config.port), ("n9", 9))
        flags = {f[0] for f in Options.optParameters}
        for s in SETTINGS:
            self.assertIn(s.flag[2:], flags)

    def test_config_file_from_env(self):
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("node_id: yaml-node\n")
        self.assertEqual(self.parse([], {"CONFIG_FILE": path}).config.node_id, "yaml-node")

    def test_bad_setting_is_one_line_and_exit_2(self):
        options = Options()
        options.environ = {}
        options.stderr = io.StringIO()
        with self.assertRaises(SystemExit) as ctx:
            options.parseOptions(["--port", "x"])
        self.assertEqual(ctx.exception.code, 2)
        message = options.stderr.getvalue()
        self.assertEqual(message.count("\n"), 1)
        self.assertIn("--port", message)

    def test_json_logs_install_twistd_logger(self):
        from twisted.application.app import ServerOptions

        parent = ServerOptions()
        parent["logger"] = None
        options = Options()
        options.parent = parent
        options.environ = {"LOG_FORMAT": "json"}
        options.parseOptions(["--node-id", "jn"])
        self.assertEqual(parent["logger"], "twisted_dhm.logs.json_observer")


class SingleDashTests(SynchronousTestCase):
    def test_translate(self):
        self.assertEqual(
            translate_args(["-node-id", "node1", "-port=8080", "--bind", "x", "-c", "f.yaml", "-"]),
            ["--node-id", "node1", "--port=8080", "--bind", "x", "-c", "f.yaml", "-"],
        )


class DocsTests(SynchronousTestCase):
    def test_configuration_doc_is_current(self):
        from pathlib import Path

        doc = (Path(__file__).parents[2] / "docs" / "configuration.md").read_text()
        self.assertIn(settings_markdown(), doc, "regenerate the table: python -m twisted_dhm.config")
