/** GrpcClient's smart routing against three in-process gRPC nodes that serve a made-up partition table. */

import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import * as grpc from "@grpc/grpc-js";
import { ConnectionError, GrpcClient, loadServices, partitionOf } from "dhashmap-client/grpc";

const Q = 8;
const ids = ["a", "b", "c"];
const states: Record<string, string> = { a: "alive", b: "alive", c: "alive" };

interface StubNode { id: string; port: number; server: grpc.Server; keyed: string[]; ringCalls: number }
const nodes: StubNode[] = [];

/** Partition p's preference list starts at node p % 3. */
function owners(p: number): string[] {
  return [0, 1, 2].map((i) => ids[(p + i) % 3]!);
}

type Callback = (error: grpc.ServiceError | null, value?: unknown) => void;

async function startNode(id: string): Promise<StubNode> {
  const services = loadServices();
  const server = new grpc.Server();
  const node: StubNode = { id, port: 0, server, keyed: [], ringCalls: 0 };
  // Keyed calls answer with the version `id`: the answer names the node that served it.
  const keyed = (call: grpc.ServerUnaryCall<{ key: Buffer }, unknown>, callback: Callback) => {
    node.keyed.push(call.request.key.toString());
    callback(null, { value: Buffer.from(id), version: id, created: true });
  };
  server.addService(services.KV.service, { Get: keyed, Put: keyed, Delete: keyed, CompareAndSwap: keyed });
  server.addService(services.Cluster.service, {
    Ring: (_call: unknown, callback: Callback) => {
      node.ringCalls++;
      callback(null, {
        partitions: Q, replicas: 3, hash: "xxh64",
        table: Array.from({ length: Q }, (_, p) => ({ partition: p, owners: owners(p) })),
      });
    },
    Members: (_call: unknown, callback: Callback) => {
      callback(null, {
        node: id,
        members: ids.map((m, i) => ({ id: m, state: states[m], host: "127.0.0.1", grpc_port: nodes[i]!.port, weight: 1 })),
      });
    },
  });
  node.port = await new Promise<number>((res, rej) => server.bindAsync("127.0.0.1:0", grpc.ServerCredentials.createInsecure(),
    (error, p) => (error ? rej(error) : res(p))));
  return node;
}

before(async () => {
  for (const id of ids) nodes.push(await startNode(id));
});

after(() => {
  for (const n of nodes) n.server.forceShutdown();
});

function keyFor(partition: number): string {
  for (let i = 0; ; i++) {
    const key = `key-${i}`;
    if (partitionOf(new TextEncoder().encode(key), Q) === partition) return key;
  }
}

function target(n: StubNode): string {
  return `127.0.0.1:${n.port}`;
}

test("each keyed call goes straight to its partition's first owner", async () => {
  const client = new GrpcClient(target(nodes[0]!), { smartRouting: true, timeoutMs: 2000 });
  try {
    for (const n of nodes) n.keyed.length = 0;
    for (let p = 0; p < Q; p++) {
      const key = keyFor(p);
      const first = owners(p)[0]!;
      assert.equal((await client.get(key)).version, first, `get, partition ${p}`);
      assert.equal(await client.put(key, "v"), first, `put, partition ${p}`);
      assert.equal(await client.compareAndSwap(key, null, "v"), first, `cas, partition ${p}`);
      await client.delete(key);
      const route = await client.route(key);
      assert.equal(route.partition, p);
      assert.deepEqual(route.owners, owners(p));
      assert.equal(route.target, target(nodes[ids.indexOf(first)]!));
    }
    // Per node: exactly the keys it owns first, four calls each.
    for (const [i, n] of nodes.entries()) {
      const want = [...Array(Q).keys()].filter((p) => owners(p)[0] === ids[i]).flatMap((p) => Array(4).fill(keyFor(p)));
      assert.deepEqual(n.keyed.sort(), want.sort(), `node ${n.id}`);
    }
  } finally {
    client.close();
  }
});

test("without smart routing every call goes to the given target", async () => {
  const client = new GrpcClient(target(nodes[2]!), { timeoutMs: 2000 });
  try {
    for (let p = 0; p < Q; p++) assert.equal((await client.get(keyFor(p))).version, "c");
  } finally {
    client.close();
  }
});

test("an owner reported dead is skipped; one that went away is avoided and the table fetched again", async () => {
  states.b = "dead";
  const client = new GrpcClient(target(nodes[0]!), { smartRouting: true, timeoutMs: 2000, backoffMs: 1 });
  try {
    const pb = [...Array(Q).keys()].find((p) => owners(p)[0] === "b")!;
    assert.equal((await client.get(keyFor(pb))).version, "c", "b is dead: its next owner serves");
    states.b = "alive";
    client.invalidateTopology();
    assert.equal((await client.get(keyFor(pb))).version, "b");

    const pc = [...Array(Q).keys()].find((p) => owners(p)[0] === "c")!;
    const ringCallsBefore = nodes[0]!.ringCalls;
    nodes[2]!.server.forceShutdown(); // c goes away, though the members still say alive
    // The refused call is tried again on the partition's next owner, with no error...
    assert.equal((await client.get(keyFor(pc))).version, owners(pc)[1]);
    // ...and a write is too: grpc could not connect, so it was never sent to c.
    assert.equal(await client.put(keyFor(pc), "v"), owners(pc)[1]);
    // The connection error made the client fetch the table again.
    for (let i = 0; i < 100 && nodes[0]!.ringCalls === ringCallsBefore; i++) await new Promise((r) => setImmediate(r));
    assert.ok(nodes[0]!.ringCalls > ringCallsBefore, "the table was not fetched again");
  } finally {
    client.close();
  }
});

test("after close() a routed call opens no channel and fails with ConnectionError (cancelled)", async () => {
  const client = new GrpcClient(target(nodes[0]!), { smartRouting: true, timeoutMs: 2000 });
  const p = [...Array(Q).keys()].find((q) => owners(q)[0] === "b")!;
  assert.equal((await client.get(keyFor(p))).version, "b"); // the table is in, b's channel open
  client.close();
  for (const n of nodes) n.keyed.length = 0;
  await assert.rejects(client.get(keyFor(p)), (error: unknown) =>
    error instanceof ConnectionError && error.code === "cancelled");
  assert.deepEqual(nodes.map((n) => n.keyed.length), [0, 0, 0], "no call reached a node");
});
