/** Error mapping, retries and timeouts against scripted fake nodes (node:http). */

import assert from "node:assert/strict";
import { after, describe, test } from "node:test";
import {
  Client,
  ConnectionError,
  DhashmapError,
  ForbiddenError,
  InvalidRequestError,
  KeyTooLongError,
  NotFoundError,
  PreconditionFailedError,
  ServerError,
  StorageFullError,
  TimeoutError,
  TooLargeError,
  UnavailableError,
  ValueTooLargeError,
} from "dhashmap-client";
import { type FakeNode, errorJson, fakeNode, freePorts } from "./fake.js";

const nodes: FakeNode[] = [];
after(async () => {
  await Promise.all(nodes.map((n) => n.close()));
});

async function node(handler: Parameters<typeof fakeNode>[0]): Promise<FakeNode> {
  const n = await fakeNode(handler);
  nodes.push(n);
  return n;
}

const quick = { retries: 2, backoffMs: 1, maxBackoffMs: 5, timeoutMs: 2000 };

describe("error mapping", () => {
  const cases: [number, string, new (...a: never[]) => DhashmapError][] = [
    [400, "invalid_request", InvalidRequestError],
    [403, "forbidden", ForbiddenError],
    [404, "not_found", NotFoundError],
    [412, "precondition_failed", PreconditionFailedError],
    [413, "value_too_large", ValueTooLargeError],
    [414, "key_too_long", KeyTooLongError],
    [503, "storage_error", UnavailableError],
    [507, "storage_full", StorageFullError],
    [500, "internal", ServerError],
  ];
  for (const [status, code, cls] of cases) {
    test(`${status} ${code} becomes ${cls.name}`, async () => {
      const n = await node((_req, res) => errorJson(res, status, code, `it is ${code}`));
      const client = new Client(n.url, { ...quick, retries: 0 });
      const error = await client.get("k").then(() => assert.fail("no error"), (e: unknown) => e);
      assert.ok(error instanceof cls, `${String(error)} is a ${cls.name}`);
      assert.ok(error instanceof DhashmapError);
      assert.equal(error.status, status);
      assert.equal(error.code, code);
      assert.match(error.message, new RegExp(`it is ${code}`));
    });
  }

  test("413 and 414 are both TooLargeError", () => {
    assert.ok(new ValueTooLargeError("x") instanceof TooLargeError);
    assert.ok(new KeyTooLongError("x") instanceof TooLargeError);
  });

  test("503 unavailable carries acks and required", async () => {
    const n = await node((_req, res) => errorJson(res, 503, "unavailable", "write: 1 of 2", { acks: 1, required: 2 }));
    const client = new Client(n.url, { ...quick, retries: 0 });
    const error = await client.put("k", "v").then(() => assert.fail("no error"), (e: unknown) => e);
    assert.ok(error instanceof UnavailableError);
    assert.equal(error.acks, 1);
    assert.equal(error.required, 2);
    assert.equal(error.code, "unavailable");
  });

  test("404 no_route (a wrong base URL) is not mistaken for a missing key", async () => {
    const n = await node((_req, res) => errorJson(res, 404, "no_route", "no such endpoint"));
    const client = new Client(n.url, quick);
    const error = await client.get("k").then(() => assert.fail("no error"), (e: unknown) => e);
    assert.ok(error instanceof DhashmapError);
    assert.ok(!(error instanceof NotFoundError));
    assert.equal(error.code, "no_route");
    assert.equal(await client.tryGet("k").catch((e: unknown) => e instanceof DhashmapError && e.code), "no_route");
  });

  test("a body that is not JSON (a proxy's HTML) still gives a typed error", async () => {
    const n = await node((_req, res) => {
      res.writeHead(502, { "content-type": "text/html" });
      res.end("<h1>Bad Gateway</h1>");
    });
    const error = await new Client(n.url, quick).get("k").then(() => assert.fail("no error"), (e: unknown) => e);
    assert.ok(error instanceof ServerError);
    assert.equal(error.status, 502);
    assert.match(error.message, /Bad Gateway/);
  });
});

describe("requests on the wire", () => {
  test("binary keys are percent-encoded byte for byte; options become headers and query", async () => {
    const n = await node((req, res) => {
      res.writeHead(req.method === "PUT" ? 201 : 204, { etag: '"tok1"' });
      res.end();
    });
    const client = new Client(n.url + "/", quick);
    const key = new Uint8Array([0x00, 0x2f, 0x2e, 0x2b, 0x20, 0x41, 0xff, 0x25]);
    const version = await client.put(key, new Uint8Array([1, 2, 3]), { ttlSeconds: 60, w: "all", ifMatch: "abc" });
    assert.equal(version, "tok1");
    await client.compareAndSwap("k.", null, "v", { w: 2 });
    await client.delete("..", { ifMatch: '"quoted"' });
    const [put, cas, del] = n.seen;
    assert.equal(put!.url, "/v1/kv/%00%2F%2E%2B%20A%FF%25?ttl=60&w=all");
    assert.equal(put!.headers["if-match"], '"abc"');
    assert.deepEqual([...put!.body], [1, 2, 3]);
    assert.equal(cas!.url, "/v1/kv/k%2E?w=2");
    assert.equal(cas!.headers["if-none-match"], "*");
    assert.equal(cas!.headers["if-match"], undefined);
    assert.equal(del!.method, "DELETE");
    assert.equal(del!.url, "/v1/kv/%2E%2E");
    assert.equal(del!.headers["if-match"], '"quoted"');
  });

  test("arguments the node would refuse are refused before sending", async () => {
    const client = new Client("http://127.0.0.1:1", quick);
    await assert.rejects(client.put("k", "v", { ttlSeconds: 1.5 }), RangeError);
    for (const ttlSeconds of [0, -1, 315_360_001, 1e21]) {
      await assert.rejects(client.put("k", "v", { ttlSeconds }), RangeError, String(ttlSeconds));
    }
    await assert.rejects(client.get("k", { r: 0 }), RangeError);
    await assert.rejects(client.get(""), RangeError);
    await assert.rejects(client.put("k", "v", { ifMatch: 'a"b' }), RangeError);
    // @ts-expect-error: a number is not a key
    await assert.rejects(client.get(42), TypeError);
  });
});

describe("retries", () => {
  function flaky(failures: number, status = 503) {
    let left = failures;
    return node((req, res) => {
      if (left > 0) {
        left--;
        errorJson(res, status, "unavailable", "not now", { acks: 1, required: 2 });
        return;
      }
      res.writeHead(req.method === "GET" ? 200 : 204, { etag: '"v"', "content-type": "application/octet-stream" });
      res.end(req.method === "GET" ? "value" : undefined);
    });
  }

  test("a GET answered 503 is retried with backoff until it succeeds", async () => {
    const n = await flaky(2);
    const got = await new Client(n.url, quick).get("k");
    assert.equal(Buffer.from(got.value).toString(), "value");
    assert.equal(n.seen.length, 3);
  });

  test("retries are bounded: the last 503 is thrown", async () => {
    const n = await flaky(10);
    await assert.rejects(new Client(n.url, quick).get("k"), UnavailableError);
    assert.equal(n.seen.length, 3);
  });

  test("an unconditional DELETE is retried; a conditional one is not", async () => {
    const a = await flaky(1);
    await new Client(a.url, quick).delete("k");
    assert.equal(a.seen.length, 2);
    const b = await flaky(1);
    await assert.rejects(new Client(b.url, quick).delete("k", { ifMatch: "v" }), UnavailableError);
    assert.equal(b.seen.length, 1);
  });

  test("a PUT answered 503 is not replayed (it may have been applied), unless retryPuts", async () => {
    const a = await flaky(1);
    await assert.rejects(new Client(a.url, quick).put("k", "v"), UnavailableError);
    assert.equal(a.seen.length, 1);
    const b = await flaky(1);
    assert.equal(await new Client(b.url, { ...quick, retryPuts: true }).put("k", "v"), "v");
    assert.equal(b.seen.length, 2);
    const c = await flaky(1);
    await assert.rejects(new Client(c.url, { ...quick, retryPuts: true }).put("k", "v", { ifMatch: "*" }),
      UnavailableError);
    assert.equal(c.seen.length, 1, "a conditional put is never replayed: a replay after success would be a false 412");
  });

  test("a refused connection is retried on the next URL, for writes too (nothing was sent)", async () => {
    const [deadPort] = await freePorts(1);
    const n = await flaky(0);
    const client = new Client([`http://127.0.0.1:${deadPort}`, n.url], quick);
    assert.equal(await client.put("k", "v", { ifMatch: "*" }), "v");
    assert.equal(n.seen.length, 1);
    // The dead URL is now avoided: the next request goes straight to the live one.
    await client.get("k");
    assert.equal(n.seen.length, 2);
  });

  test("with no node reachable, a ConnectionError with connectFailed", async () => {
    const [deadPort] = await freePorts(1);
    const error = await new Client(`http://127.0.0.1:${deadPort}`, quick).get("k")
      .then(() => assert.fail("no error"), (e: unknown) => e);
    assert.ok(error instanceof ConnectionError);
    assert.equal(error.connectFailed, true);
    assert.equal(error.status, undefined);
  });

  test("a connection reset after the PUT was sent is not replayed; a GET is", async () => {
    let resets = 0;
    const n = await node((req, res) => {
      if (resets < 1 || req.method === "PUT") {
        resets++;
        res.socket?.destroy();
        return;
      }
      res.writeHead(200, { etag: '"v"' });
      res.end("x");
    });
    const client = new Client(n.url, quick);
    assert.equal((await client.get("k")).version, "v");
    assert.equal(n.seen.length, 2);
    const error = await client.put("k", "v").then(() => assert.fail("no error"), (e: unknown) => e);
    assert.ok(error instanceof ConnectionError);
    assert.equal(error.connectFailed, false);
    assert.equal(n.seen.filter((s) => s.method === "PUT").length, 1);
  });
});

describe("timeouts", () => {
  test("a node that never answers makes the request reject with TimeoutError, not hang", async () => {
    const n = await node(() => { /* never answers */ });
    const started = Date.now();
    const error = await new Client(n.url, { ...quick, timeoutMs: 300 }).get("k")
      .then(() => assert.fail("no error"), (e: unknown) => e);
    assert.ok(error instanceof TimeoutError, String(error));
    assert.equal(error.code, "timeout");
    assert.equal(n.seen.length, 1, "a timeout is not retried");
    assert.ok(Date.now() - started < 5000);
  });

  test("a node that sends headers and then stalls in the body times out too", async () => {
    const n = await node((_req, res) => {
      res.writeHead(200, { etag: '"v"', "content-length": "100" });
      res.write("partial");
    });
    await assert.rejects(new Client(n.url, { ...quick, timeoutMs: 300 }).get("k"), TimeoutError);
  });
});
