/**
 * XXH64 (seed 0 by default) in BigInt, as docs/partitioning.md requires.
 *
 * Written out rather than taken from npm: routing must agree bit for bit with
 * the nodes, the algorithm is ~60 lines, and a dependency-free package cannot
 * break on a WebAssembly loader or a transitive update. Keys are at most a few
 * KiB, so BigInt arithmetic costs microseconds per key, far below one request.
 */

const MASK = (1n << 64n) - 1n;
const P1 = 0x9e3779b185ebca87n;
const P2 = 0xc2b2ae3d27d4eb4fn;
const P3 = 0x165667b19e3779f9n;
const P4 = 0x85ebca77c2b2ae63n;
const P5 = 0x27d4eb2f165667c5n;

function rotl(x: bigint, r: bigint): bigint {
  return ((x << r) | (x >> (64n - r))) & MASK;
}

function round(acc: bigint, input: bigint): bigint {
  acc = (acc + input * P2) & MASK;
  acc = rotl(acc, 31n);
  return (acc * P1) & MASK;
}

function mergeRound(acc: bigint, val: bigint): bigint {
  acc ^= round(0n, val);
  return (acc * P1 + P4) & MASK;
}

/** The 64-bit XXH64 hash of `data`, as an unsigned BigInt. */
export function xxh64(data: Uint8Array, seed: bigint = 0n): bigint {
  const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
  const len = data.byteLength;
  seed &= MASK;
  let offset = 0;
  let h: bigint;
  if (len >= 32) {
    let v1 = (seed + P1 + P2) & MASK;
    let v2 = (seed + P2) & MASK;
    let v3 = seed;
    let v4 = (seed - P1) & MASK;
    const limit = len - 32;
    while (offset <= limit) {
      v1 = round(v1, view.getBigUint64(offset, true));
      v2 = round(v2, view.getBigUint64(offset + 8, true));
      v3 = round(v3, view.getBigUint64(offset + 16, true));
      v4 = round(v4, view.getBigUint64(offset + 24, true));
      offset += 32;
    }
    h = (rotl(v1, 1n) + rotl(v2, 7n) + rotl(v3, 12n) + rotl(v4, 18n)) & MASK;
    h = mergeRound(h, v1);
    h = mergeRound(h, v2);
    h = mergeRound(h, v3);
    h = mergeRound(h, v4);
  } else {
    h = (seed + P5) & MASK;
  }
  h = (h + BigInt(len)) & MASK;
  while (offset + 8 <= len) {
    h ^= round(0n, view.getBigUint64(offset, true));
    h = (rotl(h, 27n) * P1 + P4) & MASK;
    offset += 8;
  }
  if (offset + 4 <= len) {
    h ^= (BigInt(view.getUint32(offset, true)) * P1) & MASK;
    h = (rotl(h, 23n) * P2 + P3) & MASK;
    offset += 4;
  }
  while (offset < len) {
    h ^= (BigInt(data[offset]!) * P5) & MASK;
    h = (rotl(h, 11n) * P1) & MASK;
    offset += 1;
  }
  h ^= h >> 33n;
  h = (h * P2) & MASK;
  h ^= h >> 29n;
  h = (h * P3) & MASK;
  h ^= h >> 32n;
  return h;
}

/** The partition of a key: `xxh64(key) % partitions`, as every node computes it. */
export function partitionOf(key: Uint8Array, partitions: number): number {
  if (!Number.isInteger(partitions) || partitions < 1) {
    throw new RangeError(`partitions must be a positive integer, not ${partitions}`);
  }
  return Number(xxh64(key) % BigInt(partitions));
}
