#!/usr/bin/env python3
"""A plain grpc.aio server for dhashmap.v1.KV, from a dict or from LMDB: the floors to compare with.

    .venv/bin/python bench/grpc_plain.py --port 19290                        # a dict
    .venv/bin/python bench/grpc_plain.py --port 19291 --lmdb /tmp/plain-lmdb   # durable, in LMDB

Only ``Get`` and ``Put`` do anything; the rest of the service answers UNIMPLEMENTED.
bench/grpc_bench.sh runs the same ghz load against these and against a node, so "gRPC overhead
over plain grpc.aio on the same machine" (issue 6) is the node's calls/s against theirs.
Default asyncio loop, one process, like a node; serves until Ctrl-C or TERM.

With ``--lmdb`` it is what a plain grpc.aio server of durable writes would be, done well, with
the node's storage library (py-lmdb): a ``Get`` reads in a read transaction of its own; a
``Put`` joins the next group commit, made in one writer thread (``sync``: fdatasync before the
call is answered), with every ``Put`` that arrived while the previous commit ran.  No
versions, replicas, index or hints: the node's write does more than this.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import signal

import grpc
import lmdb

from twisted_dhm.api import kv_pb2, kv_pb2_grpc


class PlainKV(kv_pb2_grpc.KVServicer):
    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}

    async def Get(self, request: kv_pb2.GetRequest, context: grpc.aio.ServicerContext) -> kv_pb2.GetResponse:  # noqa: N802
        value = self.data.get(request.key)
        if value is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, "no value for this key")
        return kv_pb2.GetResponse(value=value, version="v1")

    async def Put(self, request: kv_pb2.PutRequest, context: grpc.aio.ServicerContext) -> kv_pb2.PutResponse:  # noqa: N802
        created = request.key not in self.data
        self.data[request.key] = request.value
        return kv_pb2.PutResponse(version="v1", created=created)


class LMDBKV(kv_pb2_grpc.KVServicer):
    def __init__(self, path: str) -> None:
        self.env = lmdb.open(path, map_size=1 << 30, max_dbs=0)  # sync=True: fdatasync per commit
        self.writer = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="plain-lmdb-commit")
        self.pending: list[tuple[bytes, bytes, asyncio.Future]] = []
        self.committing = False

    async def Get(self, request: kv_pb2.GetRequest, context: grpc.aio.ServicerContext) -> kv_pb2.GetResponse:  # noqa: N802
        with self.env.begin() as txn:
            value = txn.get(request.key)
        if value is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, "no value for this key")
        return kv_pb2.GetResponse(value=value, version="v1")

    async def Put(self, request: kv_pb2.PutRequest, context: grpc.aio.ServicerContext) -> kv_pb2.PutResponse:  # noqa: N802
        done = asyncio.get_running_loop().create_future()
        self.pending.append((request.key, request.value, done))
        if not self.committing:
            self._commit()
        created = await done
        return kv_pb2.PutResponse(version="v1", created=created)

    def _commit(self) -> None:
        batch, self.pending = self.pending, []
        self.committing = True
        commit = asyncio.get_running_loop().run_in_executor(self.writer, self._write, batch)
        commit.add_done_callback(lambda f: self._committed(batch, f))

    def _write(self, batch: list) -> list[bool]:
        with self.env.begin(write=True) as txn:
            return [txn.replace(key, value) is None for key, value, _ in batch]  # created: nothing replaced

    def _committed(self, batch: list, commit: asyncio.Future) -> None:
        self.committing = False
        error = commit.exception()
        created = [None] * len(batch) if error is not None else commit.result()
        for (_, _, done), answer in zip(batch, created, strict=True):
            if done.done():  # the call was cancelled meanwhile
                continue
            if error is not None:
                done.set_exception(error)
            else:
                done.set_result(answer)
        if self.pending:
            self._commit()


async def serve(bind: str, port: int, path: str | None) -> None:
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    kv_pb2_grpc.add_KVServicer_to_server(PlainKV() if path is None else LMDBKV(path), server)
    if not server.add_insecure_port(f"{bind}:{port}"):
        raise SystemExit(f"grpc_plain: cannot listen on {bind}:{port}")
    await server.start()
    print(f"grpc_plain: serving dhashmap.v1.KV on {bind}:{port} from {path or 'a dict'}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(grace=0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bind", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=19290)
    parser.add_argument("--lmdb", metavar="DIR", help="keep the data durably in an LMDB environment in DIR")
    args = parser.parse_args()
    asyncio.run(serve(args.bind, args.port, args.lmdb))


if __name__ == "__main__":
    main()
