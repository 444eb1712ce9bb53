"""``dhm``: the dhashmap command line, on the sync ``Client``.

Every command returns an exit code from ``EXIT_*`` (docs/cli.md) that scripts
can rely on, and every failure is one line on stderr, never a traceback
(``DHM_DEBUG=1`` shows it, for bug reports).  Values and keys are bytes from
end to end: ``get`` writes the value unchanged to stdout, ``put`` reads it
unchanged from stdin, and key arguments are the bytes the shell passed.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import threading
import time
import traceback
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import IO, Any, NoReturn

import urllib3
from urllib3.exceptions import HTTPError, MaxRetryError

from dhashmap_client._cli_io import (
    Progress,
    encode_record,
    escape_key,
    format_table,
    parse_record,
    unescape_key,
)
from dhashmap_client._protocol import key_path, quote_version, version_from_etag
from dhashmap_client.errors import (
    DhashmapError,
    InvalidRequest,
    KeyTooLong,
    NotFound,
    PreconditionFailed,
    TransportError,
    Unavailable,
    ValueTooLarge,
    error_from_response,
)
from dhashmap_client.sync import Client, _retry_policy, _transport_error

__all__ = ["main"]

EXIT_OK = 0
EXIT_NOT_FOUND = 1
EXIT_USAGE = 2
EXIT_PRECONDITION = 3
EXIT_UNAVAILABLE = 4
EXIT_CONNECTION = 5
EXIT_SERVER = 6
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a C tool killed by the signal reports

DEFAULT_NODE = "http://127.0.0.1:8080"
LIST_PAGE = 1000


def exit_code_for(error: BaseException) -> int:
    """The exit code for a failure: the contract in docs/cli.md."""
    if isinstance(error, NotFound):
        return EXIT_NOT_FOUND
    if isinstance(error, PreconditionFailed):
        return EXIT_PRECONDITION
    if isinstance(error, Unavailable):
        return EXIT_UNAVAILABLE
    if isinstance(error, TransportError):
        return EXIT_CONNECTION
    # The node refused the request as malformed: the caller's arguments or input are at fault.
    if isinstance(error, InvalidRequest | KeyTooLong | ValueTooLarge | UsageError | ValueError | TypeError):
        return EXIT_USAGE
    return EXIT_SERVER


class UsageError(Exception):
    """Bad arguments: exit 2 with the message and a pointer to ``-h``."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see {self.prog} -h)")


# -- the context a command runs in ------------------------------------------------------------

class Context:
    """Streams, options and the client, so commands are testable in-process."""

    def __init__(self, args: argparse.Namespace, stdin: IO[bytes], stdout: IO[bytes], stderr: IO[str]) -> None:
        self.args = args
        self.stdin = stdin
        self.stdout = stdout
        self.stderr = stderr
        self.json: bool = args.json
        self.node: str = args.node
        self.timeout: float = args.timeout
        self._client: Client | None = None
        self._raw: RawHTTP | None = None

    def client(self, maxsize: int = 10) -> Client:
        if self._client is None:
            self._client = Client(self.node, timeout=self.timeout, maxsize=maxsize)
        return self._client

    def raw(self) -> RawHTTP:
        if self._raw is None:
            self._raw = RawHTTP(self.node, self.timeout)
        return self._raw

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
        if self._raw is not None:
            self._raw.close()

    def out(self, data: bytes | str) -> None:
        self.stdout.write(data.encode("utf-8") if isinstance(data, str) else data)

    def out_json(self, document: Any) -> None:
        self.out(json.dumps(document, ensure_ascii=False) + "\n")

    def err(self, line: str) -> None:
        self.stderr.write(line + "\n")
        self.stderr.flush()

    def key(self, text: str) -> bytes:
        return arg_bytes(text, getattr(self.args, "escaped", False))


def arg_bytes(text: str, escaped: bool = False) -> bytes:
    """An argument's bytes as the shell passed them (Python keeps undecodable bytes as surrogates)."""
    raw = os.fsencode(text)
    return unescape_key(raw) if escaped else raw


class RawHTTP:
    """Plain GETs and DELETEs for what ``Client`` does not expose: response bodies of the
    cluster and probe endpoints, and whether a delete found a value (its ``ETag``).

    Same URL rules, retry policy and error types as ``Client``.
    """

    def __init__(self, url: str, timeout: float) -> None:
        parsed = urllib3.util.parse_url(url)
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise ValueError(f"the node URL must be http:// or https:// with a host, not {url!r}")
        self._base_path = (parsed.path or "").rstrip("/")
        self._manager = urllib3.PoolManager(num_pools=1, maxsize=1, retries=_retry_policy(),
                                            timeout=urllib3.Timeout(connect=timeout, read=timeout))
        self._pool = self._manager.connection_from_host(parsed.host, parsed.port, parsed.scheme)

    def request(self, method: str, path: str, headers: dict[str, str] | None = None) -> Any:
        try:
            return self._pool.urlopen(method, self._base_path + path, headers=headers, redirect=False,
                                      preload_content=True, assert_same_host=False)
        except MaxRetryError as e:
            raise _transport_error(e.reason or e, method, path) from e
        except HTTPError as e:
            raise _transport_error(e, method, path) from e

    def get_json(self, path: str, ok: Sequence[int] = (200,)) -> tuple[int, Any, bytes]:
        response = self.request("GET", path)
        if response.status not in ok:
            raise error_from_response(response.status, response.data)
        try:
            return response.status, json.loads(response.data), response.data
        except ValueError:
            raise DhashmapError(f"GET {path}: the answer is not JSON", status=response.status,
                                code="bad_response") from None

    def close(self) -> None:
        self._manager.clear()


# -- commands ---------------------------------------------------------------------------------

def read_value(ctx: Context, given: str | None) -> bytes:
    if given is not None:
        return arg_bytes(given)
    if ctx.stdin.isatty():
        ctx.err("dhm: reading the value from stdin (end it with Ctrl-D)")
    return ctx.stdin.read()


def cmd_get(ctx: Context) -> int:
    item = ctx.client().get(ctx.key(ctx.args.key))
    if ctx.json:
        record = json.loads(encode_record(ctx.key(ctx.args.key), item.value))
        record["version"] = item.version
        ctx.out_json(record)
    else:
        ctx.out(item.value)
    return EXIT_OK


def cmd_put(ctx: Context) -> int:
    value = read_value(ctx, ctx.args.value)
    version = ctx.client().put(ctx.key(ctx.args.key), value, ttl=ctx.args.ttl)
    report_version(ctx, version)
    return EXIT_OK


def report_version(ctx: Context, version: str) -> None:
    if ctx.json:
        ctx.out_json({"version": version})
    else:
        ctx.err(f"version {version}")


def cmd_delete(ctx: Context) -> int:
    # Not Client.delete: the answer's ETag (present only when a value was deleted) tells
    # "deleted" from "there was nothing", and the delete stays unconditional and retry-safe.
    headers = {}
    if ctx.args.if_match is not None:
        headers["If-Match"] = quote_version(ctx.args.if_match)
    response = ctx.raw().request("DELETE", key_path(ctx.key(ctx.args.key)), headers=headers)
    if response.status not in (200, 204):
        raise error_from_response(response.status, response.data)
    etag = response.headers.get("ETag")
    if not etag:
        raise NotFound("no value for this key: nothing was deleted")
    version = version_from_etag(etag)
    if ctx.json:
        ctx.out_json({"deleted": True, "version": version})
    return EXIT_OK


def cmd_cas(ctx: Context) -> int:
    args = list(ctx.args.rest)
    if ctx.args.create:
        if len(args) == 2 and args[0] == "-":
            args = args[1:]
        if len(args) > 1:
            raise UsageError("with --create, give KEY and at most VALUE (see dhm cas -h)")
        expected, value = None, (args[0] if args else None)
    else:
        if not args:
            raise UsageError("give EXPECTED_VERSION (or - / --create to create only) (see dhm cas -h)")
        if len(args) > 2:
            raise UsageError("too many arguments: KEY EXPECTED_VERSION [VALUE] (see dhm cas -h)")
        expected = None if args[0] == "-" else args[0]
        value = args[1] if len(args) == 2 else None
    version = ctx.client().cas(ctx.key(ctx.args.key), expected, read_value(ctx, value), ttl=ctx.args.ttl)
    report_version(ctx, version)
    return EXIT_OK


def iter_keys(ctx: Context, prefix: bytes, limit: int | None) -> Iterator[bytes]:
    page = LIST_PAGE if limit is None else max(1, min(limit, LIST_PAGE))
    for n, key in enumerate(ctx.client().keys(prefix, page_size=page)):
        if limit is not None and n >= limit:
            return
        yield key


def cmd_list(ctx: Context) -> int:
    prefix = ctx.key(ctx.args.prefix) if ctx.args.prefix is not None else b""
    if ctx.json:
        # One JSON array, written as it goes so a long listing is not held in memory.
        first = True
        ctx.out("[")
        for key in iter_keys(ctx, prefix, ctx.args.limit):
            ctx.out(("\n" if first else ",\n") + json.dumps(base64.b64encode(key).decode("ascii")))
            first = False
        ctx.out("]\n" if first else "\n]\n")
    else:
        for key in iter_keys(ctx, prefix, ctx.args.limit):
            ctx.out(escape_key(key) + "\n")
    return EXIT_OK


def cmd_members(ctx: Context) -> int:
    _, document, body = ctx.raw().get_json("/v1/cluster/members")
    if ctx.json:
        ctx.out(body.rstrip(b"\n") + b"\n")
        return EXIT_OK
    local = document.get("node")
    rows = []
    for m in document.get("members", []):
        addresses = m.get("addresses", {})
        rows.append([
            ("* " if m.get("id") == local else "  ") + str(m.get("id")), m.get("state", ""),
            addresses.get("host", ""), addresses.get("rest", ""), addresses.get("peer", ""),
            addresses.get("gossip", "-"), m.get("weight", ""), m.get("incarnation", ""), m.get("version") or "-",
        ])
    ctx.out(format_table(["  ID", "STATE", "HOST", "REST", "PEER", "GOSSIP", "WEIGHT", "INCARNATION", "VERSION"],
                         rows))
    return EXIT_OK


def cmd_ring(ctx: Context) -> int:
    _, document, body = ctx.raw().get_json("/v1/cluster/ring")
    if ctx.json:
        ctx.out(body.rstrip(b"\n") + b"\n")
        return EXIT_OK
    table = document.get("table", [])
    primary: Counter[str] = Counter()
    replica: Counter[str] = Counter()
    for row in table:
        owners = row.get("owners", [])
        if owners:
            primary[owners[0]] += 1
        for owner in owners[1:]:
            replica[owner] += 1
    nodes = document.get("nodes", [])
    ctx.out(f"partitions {document.get('partitions')}, replicas {document.get('replicas')}, "
            f"hash {document.get('hash')}, {len(nodes)} nodes\n")
    total = max(len(table), 1)
    rows = [[n, primary[n], replica[n], primary[n] + replica[n], f"{(primary[n] + replica[n]) / total:.0%}"]
            for n in nodes]
    ctx.out(format_table(["NODE", "PRIMARY", "REPLICA", "TOTAL", "OF PARTITIONS"], rows))
    if ctx.args.partitions:
        ctx.out("\n" + format_table(["PARTITION", "OWNERS"],
                                    [[r.get("partition"), " ".join(r.get("owners", []))] for r in table]))
    return EXIT_OK


def cmd_status(ctx: Context) -> int:
    raw = ctx.raw()
    ready_status, ready, _ = raw.get_json("/ready", ok=(200, 503))
    _, health, _ = raw.get_json("/health")
    members: dict[str, Any] | None
    try:
        _, document, _ = raw.get_json("/v1/cluster/members")
        states = Counter(m.get("state", "unknown") for m in document.get("members", []))
        members = {"total": sum(states.values()), "by_state": dict(sorted(states.items()))}
    except DhashmapError as e:
        members = None
        members_error = str(e)
    is_ready = ready_status == 200
    try:
        _, cluster, _ = raw.get_json("/v1/cluster/status")
        nodes = cluster.get("nodes", [])
    except DhashmapError:
        nodes = None  # a node without data movement (older), or it could not ask the others
    if ctx.json:
        ctx.out_json({"node": health.get("node"), "url": ctx.node, "ready": is_ready, "readiness": ready,
                      "health": health, "members": members, "nodes": nodes})
    else:
        state = ready.get("status", "ready" if is_ready else "not_ready")
        problems = ready.get("problems") or []
        lines = [("node", f"{health.get('node')} ({ctx.node})"), ("health", health.get("status", "?")),
                 ("ready", state + (f": {'; '.join(map(str, problems))}" if problems else ""))]
        if members is not None:
            summary = ", ".join(f"{n} {s}" for s, n in members["by_state"].items())
            lines.append(("members", f"{members['total']} ({summary})"))
        else:
            lines.append(("members", f"unknown: {members_error}"))
        ctx.out("".join(f"{name:<8} {text}\n" for name, text in lines))
        if nodes:
            ctx.out("\n" + format_table(
                ["NODE", "STATE", "OWNED", "HELD", "PULLING", "TRANSFERS", "HINTS", "ANTI-ENTROPY", "REPAIRED"],
                [node_row(n) for n in nodes]))
    return EXIT_OK if is_ready else EXIT_UNAVAILABLE


def node_row(node: dict[str, Any]) -> list[Any]:
    """One line of ``dhm status``'s per-node table, from /v1/cluster/status."""
    if "partitions_owned" not in node:
        return [node.get("node"), node.get("state") or f"error: {node.get('error')}", "", "", "", "", "", "", ""]
    transfers = node.get("transfers", [])
    moving = ""
    if transfers:
        done = sum(t.get("keys_done", 0) for t in transfers)
        total = sum(t.get("keys_total", 0) for t in transfers)
        etas = [t["eta_seconds"] for t in transfers if t.get("eta_seconds") is not None]
        moving = f"{len(transfers)} ({done}/{total} keys" + (f", eta {max(etas):.0f}s)" if etas else ")")
    if node.get("transfers_queued"):
        moving += f" +{node['transfers_queued']} queued"
    ae = node.get("anti_entropy", {})
    last = ae.get("last_round")
    last_text = f"{last['seconds_ago']:.0f}s ago, {last['partitions_differing']} differed" if last else "not yet"
    return [node.get("node"), node.get("state"), node.get("partitions_owned"), node.get("partitions_held"),
            node.get("partitions_pulling"), moving or "-", node.get("hints_queued"), last_text,
            ae.get("keys_repaired", 0)]


def cmd_leave(ctx: Context) -> int:
    raw = ctx.raw()
    response = raw.request("POST", "/v1/cluster/leave")
    if response.status != 202:
        raise error_from_response(response.status, response.data)
    node = json.loads(response.data).get("node")
    if ctx.json:
        ctx.out_json({"node": node, "status": "draining"})
    else:
        ctx.err(f"{node} is draining: it hands its partitions to their next owners, leaves the ring, then exits")
    if not ctx.args.wait:
        return EXIT_OK
    deadline = time.monotonic() + ctx.args.wait
    while time.monotonic() < deadline:
        try:
            raw.get_json("/health")
        except TransportError:
            if not ctx.json:
                ctx.err(f"{node} has left")
            return EXIT_OK
        time.sleep(0.5)
    ctx.err(f"dhm: {node} is still draining after {ctx.args.wait:g}s")
    return EXIT_UNAVAILABLE


def bounded_map(pool: ThreadPoolExecutor, fn: Callable[[Any], Any], items: Iterable[Any],
                window: int) -> Iterator[tuple[Any, Future]]:
    """``(item, future)`` in input order, with at most ``window`` calls submitted but not yet
    yielded, so a million-line input is never all in memory and the node never sees more
    than ``window`` requests from us at once."""
    pending: deque[tuple[Any, Future]] = deque()
    for item in items:
        pending.append((item, pool.submit(fn, item)))
        if len(pending) >= window:
            yield pending.popleft()
    while pending:
        yield pending.popleft()


class _Input:
    """The lines of ``dhm load``'s input with their numbers, counting bytes for the progress bar."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.stream = stream
        self.bytes_read = 0
        self.last_line = 0
        self.stopped = threading.Event()

    def __iter__(self) -> Iterator[tuple[int, bytes]]:
        for number, line in enumerate(self.stream, start=1):
            if self.stopped.is_set():
                return
            self.bytes_read += len(line)
            self.last_line = number
            if line.strip():
                yield number, line


def cmd_load(ctx: Context) -> int:
    workers = ctx.args.workers
    client = ctx.client(maxsize=workers)
    if ctx.args.file == "-":
        stream, total = ctx.stdin, None
    else:
        try:
            stream = open(ctx.args.file, "rb")  # noqa: SIM115 -- closed in the finally below
        except OSError as e:
            raise UsageError(f"cannot read {ctx.args.file}: {e.strerror}") from None
        try:
            total = os.fstat(stream.fileno()).st_size
        except OSError:
            total = None
    source = _Input(stream)
    progress = Progress(ctx.stderr, total)

    def write(numbered: tuple[int, bytes]) -> None:
        key, value, ttl = parse_record(numbered[1])
        client.put(key, value, ttl=ttl)

    written = 0
    failures: list[tuple[int, int, str]] = []  # (line, exit code, reason)
    stop: tuple[int, str] | None = None
    started = time.monotonic()
    try:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="dhm-load") as pool:
            for (number, _), future in bounded_map(pool, write, source, 2 * workers):
                error = future.exception()
                if error is None:
                    written += 1
                else:
                    failures.append((number, exit_code_for(error), one_line(error)))
                    if isinstance(error, TransportError) and stop is None:
                        # The node is gone or too slow: every further line would wait out the
                        # timeout.  Finish what is in flight and stop; a re-run is safe.
                        stop = (number, one_line(error))
                        source.stopped.set()
                progress.update(written + len(failures), len(failures), source.bytes_read)
    finally:
        if stream is not ctx.stdin:
            stream.close()
    progress.finish(written + len(failures), len(failures), source.bytes_read)
    failures.sort()
    elapsed = time.monotonic() - started
    code = min((c for _, c, _ in failures), default=EXIT_OK) if stop is None else EXIT_CONNECTION
    if ctx.json:
        ctx.out_json({"written": written, "failed": [{"line": n, "exit": c, "error": r} for n, c, r in failures],
                      "stopped_after_line": source.last_line if stop else None, "seconds": round(elapsed, 3)})
    for number, _, reason in failures[:20]:
        ctx.err(f"dhm load: line {number}: {reason}")
    if len(failures) > 20:
        ctx.err(f"dhm load: ... and {len(failures) - 20} more")
    if stop is not None:
        ctx.err(f"dhm load: stopped after line {source.last_line} (connection failed at line {stop[0]}); "
                f"later lines were not read; loading again is safe")
    summary = f"dhm load: {written} written, {len(failures)} failed in {elapsed:.1f} s"
    if failures:
        summary += "; failed lines: " + ",".join(str(n) for n, _, _ in failures)
    ctx.err(summary)
    return code


def cmd_dump(ctx: Context) -> int:
    prefix = ctx.key(ctx.args.prefix) if ctx.args.prefix is not None else b""
    workers = ctx.args.workers
    client = ctx.client(maxsize=workers)

    def fetch(key: bytes) -> bytes | None:
        try:
            return client.get(key).value
        except NotFound:  # deleted or expired between the listing and the read
            return None

    count = 0
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="dhm-dump") as pool:
        for key, future in bounded_map(pool, fetch, iter_keys(ctx, prefix, ctx.args.limit), 2 * workers):
            value = future.result()
            if value is not None:
                ctx.out(encode_record(key, value) + "\n")
                count += 1
    ctx.stdout.flush()
    if ctx.stderr.isatty():
        ctx.err(f"dhm dump: {count} keys")
    return EXIT_OK


def one_line(error: BaseException) -> str:
    text = str(error) if isinstance(error, DhashmapError | UsageError | ValueError) else \
        f"{type(error).__name__}: {error}"
    return " ".join(text.split())


# -- the parser -------------------------------------------------------------------------------

EXIT_CODES_HELP = """\
exit codes:
  0  ok
  1  not found (get or delete of a key with no value)
  2  usage error (bad arguments or input; also a request the node refused as invalid)
  3  precondition failed (cas, --if-match)
  4  unavailable (node not ready, storage error, too few replicas)
  5  connection error or timeout
  6  other server error
"""

EXAMPLES = {
    "get": """\
examples:
  dhm get user/42                 # the value's bytes, unchanged, on stdout
  dhm get photo.jpg > photo.jpg   # binary-safe
  dhm get --json user/42          # {"key": ..., "value": ..., "version": ...}
""",
    "put": """\
examples:
  dhm put user/42 '{"name": "Ada"}'
  dhm put photo.jpg < photo.jpg    # no VALUE: read stdin, binary-safe
  dhm put --ttl 60 session/abc token
  dhm put --json k v               # {"version": "..."} on stdout
""",
    "delete": """\
examples:
  dhm delete user/42               # exit 1 if there was no value
  dhm delete --if-match AaIXI8_IAAABAm4xAAAAAAAAAAE user/42
""",
    "cas": """\
examples:
  v=$(dhm get --json counter | python3 -c 'import json,sys; print(json.load(sys.stdin)["version"])')
  dhm cas counter "$v" 2           # exit 3 if someone wrote since
  dhm cas lock/x - me              # create only if absent
  dhm cas --create lock/x me       # the same
  dhm cas counter "$v" < value.bin # value from stdin
""",
    "list": """\
examples:
  dhm list                         # every key, one per line
  dhm list user/ --limit 10
  dhm list --json                  # a JSON array of base64 keys
  dhm list logs/ | while IFS= read -r k; do dhm get --escaped "$k"; done

Keys are printed as UTF-8; a backslash is doubled and every byte that is not a
printable UTF-8 character is printed as \\xHH.  Pass such a line back with
--escaped to name the same key.
""",
    "members": """\
examples:
  dhm members                      # a table; * marks the node that answered
  dhm members --json               # GET /v1/cluster/members as it came
""",
    "ring": """\
examples:
  dhm ring                         # partitions per node
  dhm ring --partitions            # and the owners of every partition
  dhm ring --json                  # GET /v1/cluster/ring as it came
""",
    "status": """\
examples:
  dhm status                       # health, readiness, members by state
  dhm status --json
  until dhm status >/dev/null 2>&1; do sleep 1; done   # wait until ready
""",
    "leave": """\
examples:
  dhm --node http://10.0.0.3:8080 leave             # start the drain; the node exits when done
  dhm --node http://10.0.0.3:8080 leave --wait 600  # and wait for it to be gone
""",
    "load": """\
examples:
  dhm load data.jsonl
  dhm dump users/ | dhm --node http://10.0.0.2:8080 load -
  echo '{"key": "a", "value": "1", "ttl": 60}' | dhm load -

One JSON object per line: {"key": str, "value": str, "ttl": seconds (optional),
"encoding": "base64" (optional: key and value are base64)}.  Failed lines are
reported by number; the exit code is then non-zero.
""",
    "dump": """\
examples:
  dhm dump > all.jsonl
  dhm dump users/ > users.jsonl
  dhm dump | dhm --node http://10.0.0.2:8080 load -   # copy every key

Writes the JSON lines dhm load reads; key and value are base64 (with
"encoding": "base64") when either is not UTF-8.  TTLs are not exported.
""",
}


def positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text!r}")
    return n


def positive_float(text: str) -> float:
    try:
        n = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not n > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0: {text!r}")
    return n


def build_parser(env: dict[str, str]) -> argparse.ArgumentParser:
    def common(parser: argparse.ArgumentParser, suppress: bool) -> None:
        # Accepted before and after the command; after it, a default must not overwrite a value
        # given before it, hence SUPPRESS on the subcommands.
        default: Callable[[Any], Any] = (lambda _: argparse.SUPPRESS) if suppress else (lambda v: v)
        parser.add_argument("--node", metavar="URL", default=default(env.get("DHM_NODE") or DEFAULT_NODE),
                            help=f"the node to talk to (env DHM_NODE; default {DEFAULT_NODE})")
        parser.add_argument("--timeout", metavar="SECONDS", type=positive_float, default=default(10.0),
                            help="connect and read timeout per request (default 10)")
        parser.add_argument("--json", action="store_true", default=default(False),
                            help="machine-readable JSON on stdout")

    formatter = argparse.RawDescriptionHelpFormatter
    parser = _Parser(
        prog="dhm", formatter_class=formatter,
        description="The command line of dhashmap, a Dynamo-style distributed key-value store.",
        epilog="commands (dhm COMMAND -h for each one's options and examples):\n"
               "  get, put, delete, cas, list, members, ring, status, leave, load, dump\n\n" + EXIT_CODES_HELP
               + "\nexamples:\n  dhm put greeting hello && dhm get greeting\n"
                 "  DHM_NODE=http://10.0.0.2:8080 dhm status\n",
    )
    common(parser, suppress=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    def command(name: str, fn: Callable[[Context], int], help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text, epilog=EXAMPLES[name] + "\n" +
                           EXIT_CODES_HELP, formatter_class=formatter)
        common(p, suppress=True)
        p.set_defaults(func=fn)
        return p

    def escaped(p: argparse.ArgumentParser, what: str = "KEY") -> None:
        p.add_argument("--escaped", action="store_true",
                       help=f"{what} is escaped as dhm list prints keys (\\\\ and \\xHH)")

    p = command("get", cmd_get, "write a key's value to stdout, byte for byte")
    p.add_argument("key", metavar="KEY")
    escaped(p)

    p = command("put", cmd_put, "store a value (from VALUE, or stdin without it); prints the new version")
    p.add_argument("key", metavar="KEY")
    p.add_argument("value", metavar="VALUE", nargs="?")
    p.add_argument("--ttl", metavar="SECONDS", type=positive_int, help="expire after this many seconds")
    escaped(p)

    p = command("delete", cmd_delete, "delete a key")
    p.add_argument("key", metavar="KEY")
    p.add_argument("--if-match", metavar="VERSION", help="only if the value still has this version (or *: exists)")
    escaped(p)

    p = command("cas", cmd_cas, "compare-and-set: write only if the version is still EXPECTED_VERSION")
    p.usage = "dhm cas [options] KEY EXPECTED_VERSION|- [VALUE]\n       dhm cas [options] --create KEY [VALUE]"
    p.add_argument("key", metavar="KEY")
    p.add_argument("rest", metavar="EXPECTED_VERSION|- [VALUE]", nargs="*",
                   help="the version read before (- : create only); VALUE, or stdin without it")
    p.add_argument("--create", action="store_true", help="create only: the key must have no value")
    p.add_argument("--ttl", metavar="SECONDS", type=positive_int, help="expire after this many seconds")
    escaped(p)

    p = command("list", cmd_list, "list keys (all pages), one per line, escaped")
    p.add_argument("prefix", metavar="PREFIX", nargs="?")
    p.add_argument("--limit", metavar="N", type=positive_int, help="at most N keys")
    escaped(p, "PREFIX")

    p = command("members", cmd_members, "the cluster's members as this node sees them")
    p = command("ring", cmd_ring, "the partition table: how many partitions each node owns")
    p.add_argument("--partitions", action="store_true", help="also list the owners of every partition")
    command("status", cmd_status, "the node's health, readiness, members by state, and each node's partitions, "
            "transfers, hints and anti-entropy; exit 4 if not ready")
    p = command("leave", cmd_leave, "drain the node: its partitions go to their next owners, then it exits")
    p.add_argument("--wait", type=float, default=0, metavar="SECONDS",
                   help="wait until the node has left (exit 4 if it has not after SECONDS)")

    p = command("load", cmd_load, "write the keys of a JSON lines file (- : stdin), concurrently")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--workers", metavar="N", type=positive_int, default=8, help="writes in flight (default 8)")

    p = command("dump", cmd_dump, "write every key under PREFIX and its value as JSON lines")
    p.add_argument("prefix", metavar="PREFIX", nargs="?")
    p.add_argument("--limit", metavar="N", type=positive_int, help="at most N keys")
    p.add_argument("--workers", metavar="N", type=positive_int, default=8, help="reads in flight (default 8)")
    escaped(p, "PREFIX")
    return parser


# -- main -------------------------------------------------------------------------------------

def main(argv: Sequence[str] | None = None, *, stdin: IO[bytes] | None = None, stdout: IO[bytes] | None = None,
         stderr: IO[str] | None = None, env: dict[str, str] | None = None) -> int:
    """Run ``dhm`` with ``argv`` (default ``sys.argv[1:]``) and return its exit code."""
    stdin = stdin if stdin is not None else sys.stdin.buffer
    stdout = stdout if stdout is not None else sys.stdout.buffer
    stderr = stderr if stderr is not None else sys.stderr
    env = dict(os.environ if env is None else env)
    argv = list(sys.argv[1:] if argv is None else argv)
    ctx: Context | None = None
    try:
        try:
            args = build_parser(env).parse_args(argv)
        except SystemExit as e:  # -h/--help printed its text
            return int(e.code or 0)
        ctx = Context(args, stdin, stdout, stderr)
        code = args.func(ctx)
        stdout.flush()
        return code
    except BrokenPipeError:
        # The reader went away (dhm list | head): not an error worth a message.
        _silence_stdout(stdout)
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:
        stderr.write("dhm: interrupted\n")
        return EXIT_INTERRUPTED
    except Exception as e:  # noqa: BLE001 -- the contract: one line, never a traceback
        if env.get("DHM_DEBUG"):
            traceback.print_exc(file=stderr)
        code = exit_code_for(e)
        command = getattr(ctx.args, "command", None) if ctx is not None else None
        prefix = "dhm: error: " if isinstance(e, UsageError) else f"dhm {command}: " if command else "dhm: "
        if not isinstance(e, DhashmapError | UsageError | ValueError | TypeError):
            prefix, code = "dhm: unexpected error (DHM_DEBUG=1 shows where): ", EXIT_SERVER
        message = one_line(e)
        if isinstance(e, TransportError) and ctx is not None:
            message = f"cannot reach {ctx.node}: {message}"
        stderr.write(prefix + message + "\n")
        stderr.flush()
        return code
    finally:
        if ctx is not None:
            ctx.close()


def _silence_stdout(stdout: IO[bytes]) -> None:
    """Point stdout at /dev/null so the interpreter's final flush does not fail again."""
    if stdout is getattr(sys.stdout, "buffer", None):
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except OSError:
            pass


if __name__ == "__main__":
    sys.exit(main())
