/**
 * The wire format, free of any transport: key paths, query strings, version
 * tokens, listing pages. Kept apart so a later gRPC transport shares the byte
 * handling and cannot drift from the REST one.
 */

import { BadResponseError } from "./errors.js";

/** A key or value: bytes, or a string that is sent as its UTF-8 encoding. */
export type BytesLike = string | Uint8Array;

/** How many replicas must answer: `"one"`, `"quorum"` (the node's default), `"all"` or a count. */
export type Level = "one" | "quorum" | "all" | number;

export const KV_PATH = "/v1/kv";
export const DEFAULT_LIST_LIMIT = 1000;

const encoder = new TextEncoder();
const decoder = new TextDecoder("utf-8", { fatal: true });

/** Bytes of a key or value: strings as UTF-8; a Uint8Array (or Buffer) is used as it is. */
export function toBytes(data: BytesLike, what = "value"): Uint8Array {
  if (typeof data === "string") return encoder.encode(data);
  if (data instanceof Uint8Array) return data;
  throw new TypeError(`${what} must be a string or a Uint8Array, not ${describe(data)}`);
}

/** Decode UTF-8 bytes to a string; throws a TypeError on bytes that are not valid UTF-8. */
export function toText(data: Uint8Array): string {
  return decoder.decode(data);
}

function describe(x: unknown): string {
  if (x === null) return "null";
  if (typeof x === "object") return (x as object).constructor?.name ?? "object";
  return typeof x;
}

const UNRESERVED = new Uint8Array(256);
for (const c of "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_~") {
  UNRESERVED[c.charCodeAt(0)] = 1;
}
const HEX = "0123456789ABCDEF";

/**
 * Percent-encode every byte but the unreserved ones. `/` is escaped so a key
 * never splits into path segments, `.` so that `.` and `..` are never dot
 * segments a URL parser would remove (WHATWG URL, and so fetch, does that),
 * and `+` so that it means a plus sign in query strings too.
 */
export function quoteBytes(data: Uint8Array): string {
  let out = "";
  for (const b of data) {
    out += UNRESERVED[b] ? String.fromCharCode(b) : "%" + HEX[b >> 4] + HEX[b & 15];
  }
  return out;
}

export function keyPath(key: Uint8Array): string {
  if (key.byteLength === 0) throw new RangeError("a key must have at least one byte");
  return `${KV_PATH}/${quoteBytes(key)}`;
}

export function checkLevel(level: Level | undefined, name: string): string | undefined {
  if (level === undefined) return undefined;
  if (level === "one" || level === "quorum" || level === "all") return level;
  if (typeof level === "number" && Number.isSafeInteger(level) && level >= 1) return String(level);
  throw new RangeError(`${name} must be "one", "quorum", "all" or a positive integer, not ${String(level)}`);
}

/** The longest time to live a node accepts (ten years), over every API. */
export const MAX_TTL_SECONDS = 315_360_000;

export function checkTtl(ttl: number | undefined): string | undefined {
  if (ttl === undefined) return undefined;
  // Whole seconds only: rounding either way would change when the value disappears.
  if (typeof ttl !== "number" || !Number.isInteger(ttl)) {
    throw new RangeError(`ttlSeconds must be a whole number of seconds, not ${String(ttl)}`);
  }
  // The node's range (ten years); beyond it a number would also stop being exact, or print as 1e+21.
  if (ttl < 1 || ttl > MAX_TTL_SECONDS) {
    throw new RangeError(`ttlSeconds must be from 1 to ${MAX_TTL_SECONDS}, not ${String(ttl)}`);
  }
  return String(ttl);
}

/** `?a=1&b=2` from the entries that are set, or `""`. Values must already be URL-safe. */
export function query(params: Record<string, string | undefined>): string {
  const parts: string[] = [];
  for (const [name, value] of Object.entries(params)) {
    if (value !== undefined) parts.push(`${name}=${value}`);
  }
  return parts.length ? `?${parts.join("&")}` : "";
}

/**
 * A version token as the quoted entity tag HTTP wants. Accepts the bare token
 * (as `get` returns it) or a quoted one (copied from an `ETag` header); `*`
 * ("any existing value") passes through.
 */
export function quoteVersion(version: string): string {
  if (typeof version !== "string") {
    throw new TypeError(`a version must be a string token, not ${describe(version)}`);
  }
  if (version === "*") return version;
  const token = version.length >= 2 && version.startsWith('"') && version.endsWith('"')
    ? version.slice(1, -1)
    : version;
  if (!/^[\x21\x23-\x2b\x2d-\x7e]+$/.test(token)) {
    throw new RangeError(`not a version token: ${JSON.stringify(version)}`);
  }
  return `"${token}"`;
}

/** The token in an `ETag` header: its value without quotes (and without a weak `W/`). */
export function versionFromEtag(etag: string | null): string {
  if (!etag) throw new BadResponseError("the server sent no ETag");
  let tag = etag.trim();
  if (tag.startsWith("W/")) tag = tag.slice(2);
  if (tag.length >= 2 && tag.startsWith('"') && tag.endsWith('"')) tag = tag.slice(1, -1);
  return tag;
}

/** One page of a listing: keys in byte order, and the cursor of the next page (`null` at the end). */
export interface Page {
  keys: Uint8Array[];
  cursor: string | null;
}

export function parsePage(body: unknown): Page {
  if (typeof body !== "object" || body === null || !Array.isArray((body as { keys?: unknown }).keys)) {
    throw new BadResponseError("the server sent a listing without a keys array");
  }
  const { keys, cursor } = body as { keys: unknown[]; cursor?: unknown };
  if (cursor !== undefined && cursor !== null && typeof cursor !== "string") {
    throw new BadResponseError("the server sent a listing cursor that is not a string");
  }
  const decoded = keys.map((k) => {
    if (typeof k !== "string" || !/^[A-Za-z0-9+/]*={0,2}$/.test(k) || k.length % 4 !== 0) {
      throw new BadResponseError(`the server sent a listing key that is not base64: ${JSON.stringify(k)}`);
    }
    // A copy: a Buffer from base64 may be a view into Node's shared allocation pool.
    return new Uint8Array(Buffer.from(k, "base64"));
  });
  return { keys: decoded, cursor: cursor ? cursor : null };
}
