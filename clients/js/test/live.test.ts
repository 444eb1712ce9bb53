/** Integration tests against a live 3-node cluster that the tests start and always stop. */

import assert from "node:assert/strict";
import { after, before, beforeEach, describe, test } from "node:test";
import {
  Client,
  ConnectionError,
  KeyTooLongError,
  NotFoundError,
  PreconditionFailedError,
  TooLargeError,
  toText,
} from "dhashmap-client";
import { type LiveCluster, requestCounts, startCluster } from "./cluster.js";

let cluster: LiveCluster;
let client: Client;
let startError: unknown;

before(async () => {
  try {
    cluster = await startCluster();
    client = new Client(cluster.nodes[0]!.url, { timeoutMs: 10_000 });
  } catch (error) {
    startError = error;
  }
});

// Without a cluster (twistd missing, a node that will not start) every test fails with the
// reason, rather than being cancelled or skipped.
beforeEach(() => {
  if (startError !== undefined) throw startError;
});

after(async () => {
  await cluster?.stop();
});

const allBytes = new Uint8Array(256).map((_, i) => i);
const bytesEqual = (a: Uint8Array, b: Uint8Array) => Buffer.from(a).equals(Buffer.from(b));

describe("key operations", () => {
  test("binary keys and values round-trip byte for byte (all 256 byte values)", async () => {
    const version = await client.put(allBytes, allBytes);
    const got = await client.get(allBytes);
    assert.ok(bytesEqual(got.value, allBytes));
    assert.equal(got.version, version);
    // Every single byte as a one-byte key, "." and "/" and "%" included, through another node.
    const other = new Client(cluster.nodes[1]!.url);
    const keys = [...allBytes].map((b) => new Uint8Array([b]));
    await client.batchPut(keys.map((k) => [k, k] as const));
    const values = await other.batchGet(keys);
    values.forEach((v, b) => assert.ok(v && bytesEqual(v.value, keys[b]!), `key byte ${b}`));
    for (const key of ["..", ".", "a/../b", "x+y z", "ключ", "%zz"]) {
      await client.put(key, `value of ${key}`);
      assert.equal(toText((await other.get(key)).value), `value of ${key}`);
    }
  });

  test("an empty value, and a missing key", async () => {
    await client.put("empty", new Uint8Array());
    assert.equal((await client.get("empty")).value.byteLength, 0);
    await assert.rejects(client.get("never-written"), NotFoundError);
    assert.equal(await client.tryGet("never-written"), undefined);
  });

  test("put returns a new version each time; quorum levels are accepted", async () => {
    const v1 = await client.put("levels", "1", { w: "all" });
    const v2 = await client.put("levels", "2", { w: 1 });
    assert.notEqual(v1, v2);
    const got = await client.get("levels", { r: "all" });
    assert.equal(toText(got.value), "2");
    assert.equal(got.version, v2);
  });

  test("delete removes; deleting again succeeds; conditional delete", async () => {
    const v = await client.put("gone", "x");
    await assert.rejects(client.delete("gone", { ifMatch: "AAAA" }), PreconditionFailedError);
    await client.delete("gone", { ifMatch: v });
    await assert.rejects(client.get("gone"), NotFoundError);
    await client.delete("gone");
  });

  test("compare-and-swap: create-only, success, and conflict", async () => {
    const created = await client.compareAndSwap("cas", null, "one");
    await assert.rejects(client.compareAndSwap("cas", null, "again"), PreconditionFailedError);
    const swapped = await client.compareAndSwap("cas", created, "two");
    await assert.rejects(client.compareAndSwap("cas", created, "stale"), PreconditionFailedError);
    const got = await client.get("cas");
    assert.equal(toText(got.value), "two");
    assert.equal(got.version, swapped);
  });

  test("ttl: the value expires", async () => {
    await client.put("ttl", "short-lived", { ttlSeconds: 1 });
    assert.equal(toText((await client.get("ttl")).value), "short-lived");
    await client.put("ttl-long", "stays", { ttlSeconds: 3600 });
    const deadline = Date.now() + 10_000;
    while ((await client.tryGet("ttl")) !== undefined) {
      assert.ok(Date.now() < deadline, "the value did not expire within 10 s");
      await new Promise((r) => setTimeout(r, 200));
    }
    assert.equal(toText((await client.get("ttl-long")).value), "stays");
  });

  test("limits come back as TooLargeError", async () => {
    await assert.rejects(client.get(new Uint8Array(4097).fill(0x61)), KeyTooLongError);
    // The node answers 413 as soon as the declared length is over the limit and then closes
    // the connection at once, so fetch, still uploading, sometimes sees EPIPE/ECONNRESET
    // instead of the 413 (a race in the node's close, see the README). Either way the
    // request fails without a retry and nothing is stored.
    const error = await client.put("big", new Uint8Array(8 * 1024 * 1024 + 1)).then(
      () => assert.fail("an oversized value was accepted"), (e: unknown) => e);
    assert.ok(error instanceof TooLargeError
      || (error instanceof ConnectionError && !error.connectFailed && /EPIPE|ECONNRESET/.test(error.message)),
      String(error));
    await assert.rejects(client.get("big"), NotFoundError);
  });
});

describe("batches and listing", () => {
  test("batchPut then batchGet, aligned, with undefined for missing keys", async () => {
    const items = Array.from({ length: 50 }, (_, i) => ({ key: `batch/${String(i).padStart(2, "0")}`, value: `v${i}` }));
    const versions = await client.batchPut(items);
    assert.equal(versions.length, 50);
    const got = await client.batchGet([...items.map((i) => i.key), "batch/missing"]);
    assert.equal(got.length, 51);
    items.forEach((item, i) => {
      assert.equal(toText(got[i]!.value), item.value);
      assert.equal(got[i]!.version, versions[i]);
    });
    assert.equal(got[50], undefined);
  });

  test("scan pages through more than one page, in byte order, binary keys included", async () => {
    const keys = Array.from({ length: 25 }, (_, i) => new Uint8Array([0x73, 0x2f, 0xff - i, i])); // "s/" + 2 bytes
    await client.batchPut(keys.map((k) => [k, "x"] as const));
    await client.delete(keys[3]!);
    const expected = keys.filter((_, i) => i !== 3).map((k) => Buffer.from(k)).sort(Buffer.compare);
    const seen: Buffer[] = [];
    for await (const key of client.scan("s/", { pageSize: 4 })) seen.push(Buffer.from(key));
    assert.deepEqual(seen.map((k) => k.toString("hex")), expected.map((k) => k.toString("hex")));
    const first = await client.list("s/", { limit: 4 });
    assert.equal(first.keys.length, 4);
    assert.notEqual(first.cursor, null);
  });

  test("a prefix with + and a space is sent as bytes", async () => {
    await client.put("p+q r/1", "x");
    await client.put("p q r/2", "x");
    const keys: string[] = [];
    for await (const key of client.scan("p+q r/")) keys.push(toText(key));
    assert.deepEqual(keys, ["p+q r/1"]);
  });
});

describe("cluster", () => {
  test("members and ring", async () => {
    const members = await client.members();
    assert.equal(members.node, "j1");
    assert.deepEqual(members.members.map((m) => [m.id, m.state]), [["j1", "alive"], ["j2", "alive"], ["j3", "alive"]]);
    assert.deepEqual(members.members.map((m) => m.addresses.rest), cluster.nodes.map((n) => n.restPort));
    const ring = await client.ring();
    assert.equal(ring.partitions, 1024);
    assert.equal(ring.replicas, 3);
    assert.equal(ring.table.length, 1024);
    assert.deepEqual([...ring.nodes].sort(), ["j1", "j2", "j3"]);
  });

  test("smart routing gives the same results as unrouted requests", async () => {
    const routed = new Client(cluster.nodes.map((n) => n.url), { smartRouting: true });
    const keys = Array.from({ length: 30 }, (_, i) => `routed/${i}`);
    const versions = await routed.batchPut(keys.map((k) => [k, `value ${k}`] as const));
    const viaRouted = await routed.batchGet(keys);
    const viaPlain = await client.batchGet(keys);
    keys.forEach((k, i) => {
      assert.equal(toText(viaRouted[i]!.value), `value ${k}`);
      assert.deepEqual(viaRouted[i], viaPlain[i]);
      assert.equal(viaPlain[i]!.version, versions[i]);
    });
    const created = await routed.compareAndSwap("routed/cas", null, "a");
    await assert.rejects(client.compareAndSwap("routed/cas", null, "b"), PreconditionFailedError);
    await routed.compareAndSwap("routed/cas", created, "c");
    assert.equal(toText((await client.get("routed/cas")).value), "c");
    await routed.delete("routed/0");
    await assert.rejects(client.get("routed/0"), NotFoundError);
  });

  test("smart routing sends each key's request to its first owner", async () => {
    const routed = new Client(cluster.nodes[0]!.url, { smartRouting: true });
    const ring = await routed.ring();
    // Pick ten keys whose first owner is each node, and count what each node coordinated.
    const byOwner = new Map<string, string[]>();
    for (let i = 0; [...byOwner.values()].reduce((n, l) => n + Math.min(l.length, 10), 0) < 30; i++) {
      const key = `owned/${i}`;
      const { owners, partition } = await routed.route(key);
      assert.deepEqual(owners, ring.table[partition]!.owners);
      const list = byOwner.get(owners[0]!) ?? [];
      if (list.length < 10) list.push(key);
      byOwner.set(owners[0]!, list);
    }
    for (const target of cluster.nodes) {
      const before = await Promise.all(cluster.nodes.map((n) => requestCounts(n.url)));
      for (const key of byOwner.get(target.id)!) await routed.get(key).catch(() => undefined);
      const after = await Promise.all(cluster.nodes.map((n) => requestCounts(n.url)));
      cluster.nodes.forEach((n, i) => {
        const delta = (after[i]!.get ?? 0) - (before[i]!.get ?? 0);
        assert.equal(delta, n.id === target.id ? 10 : 0, `GETs coordinated by ${n.id} for keys owned by ${target.id}`);
      });
    }
  });
});
