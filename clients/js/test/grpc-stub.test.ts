/**
 * GrpcClient against in-process stub servers (grpc-js on 127.0.0.1): deadlines, the mapping of
 * status codes to the typed errors, streams, and the package's copy of kv.proto.
 */

import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { after, before, describe, test } from "node:test";
import * as grpc from "@grpc/grpc-js";
import {
  ConnectionError,
  GrpcClient,
  InvalidRequestError,
  KeyTooLongError,
  NotFoundError,
  PROTO_PATH,
  PreconditionFailedError,
  ServerError,
  StorageFullError,
  TimeoutError,
  UnavailableError,
  ValueTooLargeError,
  errorFromStatus,
  loadServices,
} from "dhashmap-client/grpc";
import { freePorts } from "./fake.js";

const here = dirname(fileURLToPath(import.meta.url)); // clients/js/build/test
const packageRoot = resolve(here, "..", "..");

type Handler = grpc.UntypedHandleCall;

async function stubServer(handlers: Record<string, Handler>): Promise<{ target: string; server: grpc.Server; calls: string[] }> {
  const calls: string[] = [];
  const services = loadServices();
  const server = new grpc.Server();
  const wrap = (name: string, h: Handler) => ((call: unknown, callback: unknown) => {
    calls.push(name);
    (h as (c: unknown, cb: unknown) => void)(call, callback);
  }) as Handler;
  const kv: Record<string, Handler> = {};
  for (const [name, h] of Object.entries(handlers)) kv[name] = wrap(name, h);
  server.addService(services.KV.service, kv);
  const port = await new Promise<number>((res, rej) => server.bindAsync("127.0.0.1:0", grpc.ServerCredentials.createInsecure(),
    (error, p) => (error ? rej(error) : res(p))));
  return { target: `127.0.0.1:${port}`, server, calls };
}

function unavailable(acks: number, required: number) {
  const metadata = new grpc.Metadata();
  metadata.set("acks", String(acks));
  metadata.set("required", String(required));
  return { code: grpc.status.UNAVAILABLE, details: `${acks} of ${required} replicas answered`, metadata };
}

test("the package's kv.proto is the repository's proto/dhashmap/v1/kv.proto", () => {
  const copy = readFileSync(PROTO_PATH, "utf8");
  const original = readFileSync(resolve(packageRoot, "..", "..", "proto", "dhashmap", "v1", "kv.proto"), "utf8");
  assert.equal(copy, original, "run: cp ../../proto/dhashmap/v1/kv.proto proto/dhashmap/v1/kv.proto");
  assert.equal(PROTO_PATH, resolve(packageRoot, "proto", "dhashmap", "v1", "kv.proto"));
});

test("the REST entry point does not load @grpc; the gRPC one does", () => {
  const script = `import { createRequire } from "node:module";
    await import(process.argv[1]);
    const cache = createRequire(import.meta.url).cache;
    console.log(Object.keys(cache).filter((k) => k.includes("@grpc")).length);`;
  const run = (entry: string) => {
    const out = spawnSync(process.execPath, ["--input-type=module", "-e", script, entry], { cwd: packageRoot, encoding: "utf8" });
    assert.equal(out.status, 0, out.stderr);
    return Number(out.stdout.trim());
  };
  assert.equal(run("dhashmap-client"), 0);
  assert.ok(run("dhashmap-client/grpc") > 0);
});

describe("a node that never answers", () => {
  let stub: Awaited<ReturnType<typeof stubServer>>;
  before(async () => {
    const never = () => { /* no answer, ever */ };
    stub = await stubServer({ Get: never, Put: never, Scan: never });
  });
  after(() => stub.server.forceShutdown());

  test("a unary call rejects with TimeoutError within the deadline, and is not retried", async () => {
    const client = new GrpcClient(stub.target, { timeoutMs: 300, retries: 3 });
    try {
      for (const call of [() => client.get("k"), () => client.put("k", "v")]) {
        const started = Date.now();
        const error = await call().then(() => assert.fail("resolved"), (e: unknown) => e);
        const elapsed = Date.now() - started;
        assert.ok(error instanceof TimeoutError, String(error));
        assert.equal(error.code, "timeout");
        assert.equal(error.status, undefined);
        assert.ok(elapsed >= 250 && elapsed < 1500, `took ${elapsed} ms`);
      }
      assert.deepEqual(stub.calls.filter((c) => c !== "Scan"), ["Get", "Put"]);
    } finally {
      client.close();
    }
  });

  test("a stream that never sends rejects with TimeoutError within its deadline", async () => {
    const client = new GrpcClient(stub.target, { timeoutMs: 5000 });
    try {
      const started = Date.now();
      await assert.rejects(async () => {
        for await (const _ of client.scan("p", { timeoutMs: 300 })) assert.fail("a key from nowhere");
      }, TimeoutError);
      assert.ok(Date.now() - started < 1500);
    } finally {
      client.close();
    }
  });
});

describe("status codes", () => {
  let stub: Awaited<ReturnType<typeof stubServer>>;
  let client: GrpcClient;
  const seen: Record<string, unknown>[] = [];
  before(async () => {
    let gets = 0;
    stub = await stubServer({
      // UNAVAILABLE twice, then an answer: an idempotent call is retried.
      Get: (call: grpc.ServerUnaryCall<Record<string, unknown>, unknown>, cb: grpc.sendUnaryData<unknown>) => {
        seen.push(call.request);
        if (++gets <= 2) cb(unavailable(1, 2));
        else cb(null, { value: Buffer.from("v"), version: "tok" });
      },
      Put: (_: unknown, cb: grpc.sendUnaryData<unknown>) => cb(unavailable(1, 2)),
      CompareAndSwap: (call: grpc.ServerUnaryCall<Record<string, unknown>, unknown>, cb: grpc.sendUnaryData<unknown>) => {
        seen.push(call.request);
        cb({ code: grpc.status.FAILED_PRECONDITION, details: "the version does not match" });
      },
      Delete: (_: unknown, cb: grpc.sendUnaryData<unknown>) => cb({ code: grpc.status.NOT_FOUND, details: "no" }),
      BatchPut: (call: grpc.ServerUnaryCall<{ items: { key: Buffer }[] }, unknown>, cb: grpc.sendUnaryData<unknown>) => cb(null, {
        results: call.request.items.map((item, i) => (i === 1
          ? { key: item.key, code: grpc.status.RESOURCE_EXHAUSTED, message: "the value is 9 bytes; the limit is 8" }
          : { key: item.key, version: `v${i}` })),
      }),
      Scan: (call: grpc.ServerWritableStream<unknown, unknown>) => {
        call.write({ keys: [Buffer.from("a"), Buffer.from("b")] });
        call.emit("error", { code: grpc.status.UNAVAILABLE, details: "a replica went away" });
      },
    });
    client = new GrpcClient(stub.target, { timeoutMs: 2000, retries: 2, backoffMs: 1 });
  });
  after(() => {
    client.close();
    stub.server.forceShutdown();
  });

  test("UNAVAILABLE: retried for get; a put is not, and carries acks/required from the trailers", async () => {
    assert.equal((await client.get("k")).version, "tok");
    assert.equal(stub.calls.filter((c) => c === "Get").length, 3);
    const error = await client.put("k", "v").then(() => assert.fail("resolved"), (e: unknown) => e);
    assert.ok(error instanceof UnavailableError, String(error));
    assert.equal(error.acks, 1);
    assert.equal(error.required, 2);
    assert.equal(stub.calls.filter((c) => c === "Put").length, 1);
  });

  test("conditional puts go through CompareAndSwap; FAILED_PRECONDITION is PreconditionFailedError", async () => {
    seen.length = 0;
    await assert.rejects(client.put("k", "v", { ifMatch: '"abc"', ttlSeconds: 5, w: "all" }), PreconditionFailedError);
    await assert.rejects(client.put("k", "v", { ifNoneMatch: true }), PreconditionFailedError);
    await assert.rejects(client.compareAndSwap("k", null, "v", { w: 2 }), PreconditionFailedError);
    assert.deepEqual(seen.map((r) => [r.expected_version, r.create_only, r.ttl_seconds, r.w]), [
      ["abc", false, "5", { level: 3, count: 0 }],
      ["", true, "0", null],
      ["", true, "0", { level: 0, count: 2 }],
    ]);
    await assert.rejects(client.put("k", "v", { ifMatch: "*" }), RangeError);
    await assert.rejects(client.get(""), RangeError);
  });

  test("NOT_FOUND is NotFoundError; a failed BatchPut item throws its typed error", async () => {
    await assert.rejects(client.delete("k"), NotFoundError);
    await assert.rejects(client.batchPut([["a", "1"], ["b", "123456789"], ["c", "3"]]), ValueTooLargeError);
    assert.deepEqual(await client.batchPut([["a", "1"]]), ["v0"]);
  });

  test("an error in the middle of a stream ends scan with the typed error, after the keys sent", async () => {
    const keys: string[] = [];
    await assert.rejects(async () => {
      for await (const k of client.scan("")) keys.push(Buffer.from(k).toString());
    }, UnavailableError);
    assert.deepEqual(keys, ["a", "b"]);
  });

  test("list is retried after UNAVAILABLE, as the idempotent calls are (its page is read whole)", async () => {
    const scans = () => stub.calls.filter((c) => c === "Scan").length;
    const before = scans();
    await assert.rejects(client.list(""), UnavailableError);
    assert.equal(scans() - before, 3, "the first try and two retries");
  });

  test("the mapping of every status", () => {
    const md = new grpc.Metadata();
    md.set("acks", "0");
    md.set("required", "3");
    const cases: [number, string, grpc.Metadata | undefined, Function, string][] = [
      [grpc.status.NOT_FOUND, "no value", undefined, NotFoundError, "not_found"],
      [grpc.status.FAILED_PRECONDITION, "lost", undefined, PreconditionFailedError, "precondition_failed"],
      [grpc.status.INVALID_ARGUMENT, "the key is empty", undefined, InvalidRequestError, "invalid_request"],
      [grpc.status.RESOURCE_EXHAUSTED, "the key is 5000 bytes; the limit is 4096", undefined, KeyTooLongError, "key_too_long"],
      [grpc.status.RESOURCE_EXHAUSTED, "the value is 9 bytes; the limit is 8", undefined, ValueTooLargeError, "value_too_large"],
      [grpc.status.RESOURCE_EXHAUSTED, "LMDB map is full; raise --lmdb-map-size", undefined, StorageFullError, "storage_full"],
      // The store's message names its path, which may say "key": still a full store.
      [grpc.status.RESOURCE_EXHAUSTED, "the store at /var/lib/keyvalue is full (map size 1024 bytes); raise --lmdb-map-size",
        undefined, StorageFullError, "storage_full"],
      [grpc.status.UNAVAILABLE, "0 of 3", md, UnavailableError, "unavailable"],
      [grpc.status.UNAVAILABLE, "No connection established. Last error: connect ECONNREFUSED", undefined, ConnectionError, "connection_error"],
      [grpc.status.DEADLINE_EXCEEDED, "Deadline exceeded", undefined, TimeoutError, "timeout"],
      [grpc.status.CANCELLED, "Cancelled on client", undefined, ConnectionError, "cancelled"],
      [grpc.status.INTERNAL, "see its log", undefined, ServerError, "internal"],
      [grpc.status.UNIMPLEMENTED, "no such method", undefined, ServerError, "unimplemented"],
    ];
    for (const [code, details, metadata, cls, name] of cases) {
      const error = errorFromStatus(code, details, metadata);
      assert.ok(error instanceof cls, `${code} ${details}: ${error.name}`);
      assert.equal(error.code, name);
      assert.equal(error.status, undefined);
    }
    const u = errorFromStatus(grpc.status.UNAVAILABLE, "0 of 3", md) as UnavailableError;
    assert.deepEqual([u.acks, u.required], [0, 3]);
  });
});

test("a node that is not there: ConnectionError with connectFailed", async () => {
  const [port] = await freePorts(1);
  const client = new GrpcClient(`127.0.0.1:${port}`, { timeoutMs: 2000, retries: 1, backoffMs: 1 });
  try {
    const error = await client.members().then(() => assert.fail("resolved"), (e: unknown) => e);
    assert.ok(error instanceof ConnectionError, String(error));
    assert.equal(error.connectFailed, true);
  } finally {
    client.close();
  }
});
