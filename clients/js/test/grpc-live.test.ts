/** GrpcClient against a live 3-node cluster with gRPC ports, started by the test and always stopped. */

import assert from "node:assert/strict";
import { after, before, beforeEach, describe, test } from "node:test";
import { Client, NotFoundError, PreconditionFailedError, toText } from "dhashmap-client";
import { GrpcClient, InvalidRequestError, KeyTooLongError } from "dhashmap-client/grpc";
import { type LiveCluster, startCluster } from "./cluster.js";

let cluster: LiveCluster;
let client: GrpcClient;
let rest: Client;
let startError: unknown;

before(async () => {
  try {
    cluster = await startCluster(3, 60_000, { grpc: true });
    client = new GrpcClient(`127.0.0.1:${cluster.nodes[0]!.grpcPort}`, { timeoutMs: 10_000 });
    rest = new Client(cluster.nodes[0]!.url, { timeoutMs: 10_000 });
  } catch (error) {
    startError = error;
  }
});

// Without a cluster every test fails with the reason, rather than being skipped.
beforeEach(() => {
  if (startError !== undefined) throw startError;
});

after(async () => {
  client?.close();
  await cluster?.stop();
});

const allBytes = new Uint8Array(256).map((_, i) => i);
const hex = (b: Uint8Array) => Buffer.from(b).toString("hex");

describe("key operations over gRPC", () => {
  test("binary keys and values round-trip byte for byte; REST reads the same value and version", async () => {
    const version = await client.put(allBytes, allBytes);
    const got = await client.get(allBytes);
    assert.equal(hex(got.value), hex(allBytes));
    assert.ok(got.value instanceof Uint8Array);
    assert.equal(got.version, version);
    const viaRest = await rest.get(allBytes);
    assert.equal(hex(viaRest.value), hex(allBytes));
    assert.equal(viaRest.version, version);
    await client.put("empty", new Uint8Array());
    assert.equal((await client.get("empty")).value.byteLength, 0);
    const other = new GrpcClient(`127.0.0.1:${cluster.nodes[2]!.grpcPort}`);
    try {
      assert.equal(toText((await other.get("empty", { r: "all" })).value), "");
    } finally {
      other.close();
    }
  });

  test("NOT_FOUND: get rejects, tryGet is undefined; delete of an absent key succeeds", async () => {
    await assert.rejects(client.get("never-written"), NotFoundError);
    assert.equal(await client.tryGet("never-written"), undefined);
    await client.delete("never-written");
  });

  test("compare-and-swap: create-only, success, conflict; conditional put and delete", async () => {
    const created = await client.compareAndSwap("cas", null, "one");
    await assert.rejects(client.compareAndSwap("cas", null, "again"), PreconditionFailedError);
    const swapped = await client.compareAndSwap("cas", created, "two", { w: "all" });
    await assert.rejects(client.compareAndSwap("cas", created, "stale"), PreconditionFailedError);
    await assert.rejects(client.put("cas", "x", { ifNoneMatch: true }), PreconditionFailedError);
    const third = await client.put("cas", "three", { ifMatch: swapped });
    assert.equal(toText((await client.get("cas")).value), "three");
    await assert.rejects(client.delete("cas", { ifMatch: swapped }), PreconditionFailedError);
    await client.delete("cas", { ifMatch: third });
    await assert.rejects(client.get("cas"), NotFoundError);
  });

  test("versions are shared: a gRPC version is a REST ifMatch, and the other way round", async () => {
    const v1 = await client.put("shared", "from grpc", { ttlSeconds: 3600, w: 2 });
    const v2 = await rest.put("shared", "from rest", { ifMatch: v1 });
    await assert.rejects(rest.put("shared", "stale", { ifMatch: v1 }), PreconditionFailedError);
    const v3 = await client.compareAndSwap("shared", v2, "from grpc again");
    assert.equal((await rest.get("shared")).version, v3);
    assert.equal(toText((await rest.get("shared")).value), "from grpc again");
  });

  test("the node's refusals: an oversized key, a bad version token", async () => {
    await assert.rejects(client.get(new Uint8Array(4097).fill(0x61)), KeyTooLongError);
    await assert.rejects(client.compareAndSwap("k", "not-a-token", "v"), InvalidRequestError);
    await assert.rejects(client.get("k", { r: 7 }), InvalidRequestError);
  });
});

describe("batches, scan and list over gRPC", () => {
  test("batchPut then batchGet, aligned, undefined for missing keys; binary keys", async () => {
    const items = Array.from({ length: 50 }, (_, i) => ({ key: `batch/${String(i).padStart(2, "0")}`, value: `v${i}` }));
    const versions = await client.batchPut(items, { w: "quorum" });
    assert.equal(versions.length, 50);
    const got = await client.batchGet([...items.map((i) => i.key), "batch/missing"]);
    assert.equal(got.length, 51);
    items.forEach((item, i) => {
      assert.equal(toText(got[i]!.value), item.value);
      assert.equal(got[i]!.version, versions[i]);
    });
    assert.equal(got[50], undefined);
    const keys = [...allBytes].map((b) => new Uint8Array([0xfe, b]));
    await client.batchPut(keys.map((k) => [k, k] as const));
    const values = await client.batchGet(keys);
    values.forEach((v, b) => assert.equal(v && hex(v.value), hex(keys[b]!), `key byte ${b}`));
    // Over 1000 items: several calls.
    const many = Array.from({ length: 1205 }, (_, i) => [`many/${String(i).padStart(4, "0")}`, String(i)] as const);
    assert.equal((await client.batchPut(many)).length, 1205);
    const back = await client.batchGet(many.map(([k]) => k));
    assert.deepEqual(back.map((v) => v && toText(v.value)), many.map(([, v]) => v));
  });

  test("scan streams every key in byte order, page by page; list pages with cursors", async () => {
    const expected = Array.from({ length: 37 }, (_, i) => `scan/${String(i).padStart(3, "0")}`);
    await client.batchPut(expected.map((k) => [k, "x"] as const));
    await client.put("scan0", "not in the prefix");
    const seen: string[] = [];
    for await (const k of client.scan("scan/", { pageSize: 5 })) seen.push(toText(k));
    assert.deepEqual(seen, expected);
    const limited: string[] = [];
    for await (const k of client.scan("scan/", { pageSize: 4, limit: 10, startAfter: "scan/004" })) limited.push(toText(k));
    assert.deepEqual(limited, expected.slice(5, 15));
    // Leaving early cancels the stream; the client stays usable.
    for await (const k of client.scan("scan/", { pageSize: 2 })) if (toText(k) === "scan/003") break;
    const paged: string[] = [];
    let cursor: string | null = null;
    let pages = 0;
    do {
      const page: Awaited<ReturnType<GrpcClient["list"]>> = await client.list("scan/", { limit: 10, cursor });
      paged.push(...page.keys.map(toText));
      cursor = page.cursor;
      pages++;
    } while (cursor !== null);
    assert.deepEqual(paged, expected);
    assert.equal(pages, 4);
    // The keys agree with REST's listing.
    const restKeys: string[] = [];
    for await (const k of rest.scan("scan/")) restKeys.push(toText(k));
    assert.deepEqual(restKeys, expected);
    const binary: string[] = [];
    for await (const k of client.scan(new Uint8Array([0xfe]))) binary.push(hex(k));
    assert.deepEqual(binary, [...allBytes].map((b) => hex(new Uint8Array([0xfe, b]))));
  });
});

describe("cluster over gRPC", () => {
  test("members and ring match the REST answers", async () => {
    const members = await client.members();
    assert.equal(members.node, "j1");
    assert.deepEqual(members.members.map((m) => [m.id, m.state]), [["j1", "alive"], ["j2", "alive"], ["j3", "alive"]]);
    assert.deepEqual(members.members.map((m) => m.addresses.rest), cluster.nodes.map((n) => n.restPort));
    assert.deepEqual(members.members.map((m) => m.addresses.grpc), cluster.nodes.map((n) => n.grpcPort));
    const viaRest = await rest.members();
    assert.deepEqual(members.members.map((m) => [m.id, m.addresses.host, m.addresses.peer, m.incarnation]),
      viaRest.members.map((m) => [m.id, m.addresses.host, m.addresses.peer, m.incarnation]));
    const ring = await client.ring();
    const restRing = await rest.ring();
    assert.equal(ring.partitions, restRing.partitions);
    assert.equal(ring.replicas, restRing.replicas);
    assert.equal(ring.hash, "xxh64");
    assert.deepEqual(ring.table, restRing.table);
    assert.deepEqual(ring.nodes, [...restRing.nodes].sort());
  });
});

describe("smart routing over gRPC", () => {
  test("each keyed call is sent to the gRPC port of the key's first owner, with the answers of an unrouted client", async () => {
    const smart = new GrpcClient(`127.0.0.1:${cluster.nodes[1]!.grpcPort}`, { smartRouting: true, timeoutMs: 10_000 });
    try {
      const ring = await rest.ring();
      const portOf = new Map(cluster.nodes.map((n) => [n.id, n.grpcPort]));
      const targets = new Set<string>();
      for (let i = 0; i < 30; i++) {
        const key = `grpc-smart/${i}`;
        const route = await smart.route(key);
        const first = ring.table.find((p) => p.partition === route.partition)!.owners[0]!;
        assert.deepEqual(route.owners, ring.table.find((p) => p.partition === route.partition)!.owners);
        assert.equal(route.target, `127.0.0.1:${portOf.get(first)}`, key);
        targets.add(route.target);
        const version = await smart.put(key, `v${i}`);
        const viaPlain = await client.get(key);
        assert.equal(viaPlain.version, version);
        assert.equal(toText((await smart.get(key)).value), `v${i}`);
        await smart.delete(key);
        await assert.rejects(client.get(key), NotFoundError);
      }
      assert.equal(targets.size, 3, "30 keys should spread over the three nodes");
    } finally {
      smart.close();
    }
  });
});
