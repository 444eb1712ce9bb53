import assert from "node:assert/strict";
import { test } from "node:test";
import { partitionOf, xxh64 } from "dhashmap-client";

// docs/partitioning.md: key (hex), xxh64, partition with Q = 1024.
const VECTORS: [string, string, number][] = [
  ["", "ef46db3751d8e999", 409],
  ["61", "d24ec4f1a98c6e5b", 603],
  ["757365722f3432", "e89f2a24fc2bb767", 871],
  ["00ff", "e0d97d9a03131d7d", 381],
  ["d0bad0bbd18ed187", "a17d2dd13d89d19c", 412],
  ["78".repeat(100), "92f0de5a88a3c094", 148],
];

test("xxh64 matches the test vectors of docs/partitioning.md", () => {
  for (const [hex, hash, partition] of VECTORS) {
    const key = new Uint8Array(Buffer.from(hex, "hex"));
    assert.equal(xxh64(key).toString(16).padStart(16, "0"), hash, `xxh64 of ${hex || "(empty)"}`);
    assert.equal(partitionOf(key, 1024), partition, `partition of ${hex || "(empty)"}`);
  }
});

test("xxh64 covers every tail length and reads views at an offset", () => {
  // XXH64 (seed 0) of prefixes of `text`, from Python's xxhash (the library the nodes use):
  // they exercise the 32-byte stripes and the 8-, 4- and 1-byte tails.
  const text = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
  const expected: Record<number, string> = {
    3: "1c2dcb4b9024d73d", 4: "4c33072b45647dcb", 7: "97ee4fe4a0ff4dfa", 8: "e4ba22a49ad89d3f",
    12: "862e292326b8a4fc", 31: "80adfc1d42020f39", 32: "bf7c9dbe16b5c6e2", 33: "e97423e605e2f3b4",
    40: "1b3ce041c106b50b", 62: "7639d419de614eed",
  };
  const whole = new TextEncoder().encode(text);
  for (const [n, hash] of Object.entries(expected)) {
    const bytes = whole.subarray(0, Number(n));
    assert.equal(xxh64(bytes).toString(16).padStart(16, "0"), hash, `prefix of ${n} bytes`);
    // The same bytes inside a larger buffer, at an odd offset, hash the same.
    const padded = new Uint8Array(bytes.length + 3);
    padded.set(bytes, 3);
    assert.equal(xxh64(padded.subarray(3)).toString(16).padStart(16, "0"), hash);
  }
});

test("partitionOf refuses a partition count that is not a positive integer", () => {
  assert.throws(() => partitionOf(new Uint8Array([1]), 0), RangeError);
  assert.throws(() => partitionOf(new Uint8Array([1]), 1.5), RangeError);
});
