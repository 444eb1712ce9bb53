/**
 * Smart routing's "not mine": nodes that are not a key's owner say so (REST header
 * `Dhashmap-Owners`, gRPC trailing metadata `dhashmap-owners`). A client routing by a
 * stale table fetches it again once, in the background, and then goes to the right
 * node; a correct table never makes it fetch again.
 */

import assert from "node:assert/strict";
import { test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import * as grpc from "@grpc/grpc-js";
import { Client } from "dhashmap-client";
import { GrpcClient, loadServices } from "dhashmap-client/grpc";
import { type FakeNode, fakeNode, json } from "./fake.js";

const Q = 4;
const ids = ["a", "b"];

/** The cluster's table: every partition owned by one node, which a test changes. */
interface Cluster { owner: string; ringCalls: number }

function table(cluster: Cluster): { partition: number; owners: string[] }[] {
  return Array.from({ length: Q }, (_, p) => ({ partition: p, owners: [cluster.owner] }));
}

async function waitFor(what: string, ok: () => boolean): Promise<void> {
  const deadline = Date.now() + 5000;
  while (!ok()) {
    if (Date.now() > deadline) assert.fail(what);
    await sleep(5);
  }
}

/** The stale-table scenario for one client: `get(key)` answers with the serving node's id. */
async function scenario(cluster: Cluster, notMine: { refreshes: number }, get: (key: string) => Promise<string>,
                        served: Record<string, number>): Promise<void> {
  const keys = Array.from({ length: 12 }, (_, i) => `k${i}`);
  for (const key of keys) assert.equal(await get(key), "b", "b is every key's owner");
  assert.equal(cluster.ringCalls, 1, "a correct table is never fetched again");
  assert.equal(notMine.refreshes, 0);

  cluster.owner = "a"; // the cluster's table changes; the client's is now stale
  assert.equal(await get("k0"), "b", "b still answers (it coordinates), and says it is not the owner");
  await waitFor("'not mine' did not make the client fetch the table", () => cluster.ringCalls === 2);
  const before = served.b!;
  for (const key of keys) assert.equal(await get(key), "a", "after the fetch, keys go to their owner a");
  await sleep(1200); // room for a second fetch, if one were asked for
  assert.equal(cluster.ringCalls, 2, "exactly one fetch");
  assert.equal(notMine.refreshes, 1);
  assert.equal(served.b, before, "no request went to b after the fetch");
}

test("REST: a stale table is fetched again once after 'not mine', a correct one never", async () => {
  const cluster: Cluster = { owner: "b", ringCalls: 0 };
  const served: Record<string, number> = { a: 0, b: 0 };
  const nodes: FakeNode[] = [];
  const ports: number[] = [];
  for (const id of ids) {
    const n = await fakeNode((req, res) => {
      if (req.url === "/v1/cluster/ring") {
        cluster.ringCalls++;
        json(res, 200, { partitions: Q, replicas: 1, hash: "xxh64", nodes: ids, table: table(cluster) });
      } else if (req.url === "/v1/cluster/members") {
        json(res, 200, {
          node: id,
          members: ids.map((m, i) => ({
            id: m, state: "alive", addresses: { host: "127.0.0.1", peer: 1, rest: ports[i] },
            weight: 1, version: "0.1.0", incarnation: 0,
          })),
        });
      } else {
        served[id]!++;
        const headers: Record<string, string> = { etag: `"${id}"` };
        if (id !== cluster.owner) headers["dhashmap-owners"] = cluster.owner;
        res.writeHead(200, headers);
        res.end(id);
      }
    });
    ports.push(n.port);
    nodes.push(n);
  }
  try {
    const client = new Client([nodes[0]!.url], { smartRouting: true, timeoutMs: 2000 });
    await scenario(cluster, client.notMine, async (key) => (await client.get(key)).version, served);
  } finally {
    await Promise.all(nodes.map((n) => n.close()));
  }
});

type Callback = (error: grpc.ServiceError | null, value?: unknown, trailer?: grpc.Metadata) => void;

test("gRPC: a stale table is fetched again once after 'not mine', a correct one never", async () => {
  const cluster: Cluster = { owner: "b", ringCalls: 0 };
  const served: Record<string, number> = { a: 0, b: 0 };
  const services = loadServices();
  const servers: grpc.Server[] = [];
  const ports: number[] = [];
  for (const id of ids) {
    const server = new grpc.Server();
    server.addService(services.KV.service, {
      Get: (_call: unknown, callback: Callback) => {
        served[id]!++;
        const trailer = new grpc.Metadata();
        if (id !== cluster.owner) trailer.set("dhashmap-owners", cluster.owner);
        callback(null, { value: Buffer.from(id), version: id }, trailer);
      },
    });
    server.addService(services.Cluster.service, {
      Ring: (_call: unknown, callback: Callback) => {
        cluster.ringCalls++;
        callback(null, { partitions: Q, replicas: 1, hash: "xxh64", table: table(cluster) });
      },
      Members: (_call: unknown, callback: Callback) => {
        callback(null, {
          node: id,
          members: ids.map((m, i) => ({ id: m, state: "alive", host: "127.0.0.1", grpc_port: ports[i], weight: 1 })),
        });
      },
    });
    ports.push(await new Promise<number>((res, rej) => server.bindAsync("127.0.0.1:0",
      grpc.ServerCredentials.createInsecure(), (error, p) => (error ? rej(error) : res(p)))));
    servers.push(server);
  }
  const client = new GrpcClient(`127.0.0.1:${ports[0]}`, { smartRouting: true, timeoutMs: 2000 });
  try {
    await scenario(cluster, client.notMine, async (key) => (await client.get(key)).version, served);
  } finally {
    client.close();
    for (const s of servers) s.forceShutdown();
  }
});
