#!/usr/bin/env python3
"""A plain grpc.aio server for dhashmap.v1.KV with an in-memory dict: the floor to compare with.

    .venv/bin/python bench/grpc_plain.py --port 19290        # serves until Ctrl-C / TERM

Only ``Get`` and ``Put`` do anything (a dict lookup or store, a fixed version token); the rest
of the service answers UNIMPLEMENTED.  bench/grpc_bench.sh runs the same ghz load against it
and against a node, so "gRPC overhead over plain grpc.aio on the same machine" (issue 6) is
the node's calls/s against this one's.  Default asyncio loop, one process, like a node.
"""

from __future__ import annotations

import argparse
import asyncio
import signal

import grpc

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


async def serve(bind: str, port: int) -> None:
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    kv_pb2_grpc.add_KVServicer_to_server(PlainKV(), server)
    if not server.add_insecure_port(f"{bind}:{port}"):
        raise SystemExit(f"grpc_plain: cannot listen on {bind}:{port}")
    await server.start()
    print(f"grpc_plain: serving dhashmap.v1.KV on {bind}:{port}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(grace=0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bind", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=19290)
    args = parser.parse_args()
    asyncio.run(serve(args.bind, args.port))


if __name__ == "__main__":
    main()
