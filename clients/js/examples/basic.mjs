// node examples/basic.mjs [http://127.0.0.1:8080 ...]   (after npm run build)
import {
  Client,
  NotFoundError,
  PreconditionFailedError,
  toText,
} from "dhashmap-client";

const urls = process.argv.length > 2 ? process.argv.slice(2) : ["http://127.0.0.1:8080"];
const db = new Client(urls, { timeoutMs: 5000, retries: 2, smartRouting: urls.length > 1 });

const version = await db.put("user/42", JSON.stringify({ name: "Ada" }));
const item = await db.get("user/42");
console.log("read", toText(item.value), "version", item.version, item.version === version);

await db.put("session/abc", "token", { ttlSeconds: 60 });

// Compare-and-swap: write only if nobody else wrote since we read.
try {
  await db.compareAndSwap("user/42", item.version, JSON.stringify({ name: "Ada L." }));
} catch (error) {
  if (!(error instanceof PreconditionFailedError)) throw error;
  console.log("someone else wrote first: read again and retry");
}
await db.compareAndSwap(`lock/${Date.now()}`, null, "me"); // null: create only if absent

// Binary keys and values.
await db.put(new Uint8Array([0, 255, 47]), new Uint8Array([1, 2, 3]));

await db.batchPut([["user/1", "a"], ["user/2", "b"], { key: "user/3", value: "c", ttlSeconds: 600 }]);
const values = await db.batchGet(["user/1", "user/2", "user/404"]);
console.log("batch", values.map((v) => (v ? toText(v.value) : undefined)));

for await (const key of db.scan("user/")) console.log("key", toText(key));

await db.delete("user/42", { ifMatch: (await db.get("user/42")).version });
try {
  await db.get("user/42");
} catch (error) {
  if (!(error instanceof NotFoundError)) throw error;
  console.log("user/42 is gone");
}

const { members } = await db.members();
console.log("members", members.map((m) => `${m.id}=${m.state}@${m.addresses.host}:${m.addresses.rest}`).join(" "));
console.log("user/1 is routed to", await db.route("user/1"));
