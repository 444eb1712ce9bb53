/**
 * dhashmap-client/grpc: a client for dhashmap's gRPC API (services dhashmap.v1.KV and
 * dhashmap.v1.Cluster, docs/grpc.md), with the method names, return types and error
 * classes of the REST `Client`.
 *
 * A separate entry point, so that `import ... from "dhashmap-client"` never loads
 * `@grpc/grpc-js`. The schema is the package's copy of `proto/dhashmap/v1/kv.proto`,
 * loaded at runtime with `@grpc/proto-loader` (a test checks the copy against the repository's).
 */

import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import { fileURLToPath } from "node:url";
import type { BatchItem, GetOptions, ListOptions, PutOptions, Value } from "./client.js";
import { type BytesLike, type Level, type Page, DEFAULT_LIST_LIMIT, checkLevel, checkTtl, quoteVersion, toBytes } from "./codec.js";
import {
  BadResponseError,
  ConnectionError,
  type DhashmapError,
  ForbiddenError,
  InvalidRequestError,
  KeyTooLongError,
  NotFoundError,
  PreconditionFailedError,
  ServerError,
  StorageFullError,
  TimeoutError,
  UnavailableError,
  ValueTooLargeError,
} from "./errors.js";
import { type Member, type Members, NotMineGate, OWNERS_HEADER, type Ring, Topology } from "./routing.js";

export * from "./index.js";

/** The proto file inside the package (`proto/dhashmap/v1/kv.proto`), next to `dist/`. */
export const PROTO_PATH = fileURLToPath(new URL("../proto/dhashmap/v1/kv.proto", import.meta.url));

/** What the node accepts per BatchGet / BatchPut; longer batches are sent as several calls. */
export const MAX_BATCH = 1000;

/** Options of `loadSync`: field names as in the .proto, 64-bit integers as strings, bytes as Buffers. */
export const LOADER_OPTIONS: protoLoader.Options = {
  keepCase: true,
  longs: String,
  enums: Number,
  bytes: Buffer,
  defaults: true,
  oneofs: true,
};

type Callback<T> = (error: grpc.ServiceError | null, response?: T) => void;
type Unary = (request: object, metadata: grpc.Metadata, options: grpc.CallOptions, callback: Callback<unknown>) => grpc.ClientUnaryCall;
type ServerStream = (request: object, metadata: grpc.Metadata, options: grpc.CallOptions) => grpc.ClientReadableStream<unknown>;
type Stub = grpc.Client & Record<string, Unary | ServerStream>;

interface Services {
  KV: grpc.ServiceClientConstructor;
  Cluster: grpc.ServiceClientConstructor;
}

let loaded: Services | undefined;

/** The KV and Cluster service definitions, loaded once per process. */
export function loadServices(): Services {
  if (loaded === undefined) {
    const definition = protoLoader.loadSync(PROTO_PATH, LOADER_OPTIONS);
    const root = grpc.loadPackageDefinition(definition) as unknown as { dhashmap: { v1: Services } };
    loaded = root.dhashmap.v1;
  }
  return loaded;
}

// Messages as proto-loader decodes them (keepCase, longs as strings, bytes as Buffers, defaults set).
interface Quorum { level: number; count: number }
interface GetResponse { value: Buffer; version: string }
interface VersionResponse { version: string }
interface BatchGetResponse { items: { key: Buffer; found: boolean; value: Buffer; version: string }[] }
interface BatchPutResponse { results: { key: Buffer; version: string; code: number; message: string }[] }
interface ScanResponse { keys: Buffer[] }
interface PbMember {
  id: string; state: string; host: string; peer_port: number; rest_port: number; grpc_port: number;
  gossip_port: number; weight: number; version: string; incarnation: string;
}
interface MembersResponse { node: string; members: PbMember[] }
interface RingResponse { partitions: number; replicas: number; hash: string; table: { partition: number; owners: string[] }[] }

export interface GrpcClientOptions {
  /** Deadline of each call, in ms (for `scan`, of the whole stream). Default 10000. */
  timeoutMs?: number;
  /** Further tries of an idempotent call after UNAVAILABLE (see the README). Default 2. */
  retries?: number;
  /** First backoff before a retry, in ms; doubled each time, with jitter. Default 50. */
  backoffMs?: number;
  /** Upper bound of one backoff, in ms. Default 1000. */
  maxBackoffMs?: number;
  /** Channel credentials; default `grpc.credentials.createInsecure()` (the node serves plaintext). */
  credentials?: grpc.ChannelCredentials;
  /** Extra grpc-js channel options (`grpc.keepalive_time_ms`, ...). */
  channelOptions?: grpc.ChannelOptions;
  /**
   * Send each key's get, put, delete and compareAndSwap straight to the gRPC port of
   * the key's first live owner, from the partition table (Cluster.Ring and
   * Cluster.Members). Default false: the target node coordinates every request.
   */
  smartRouting?: boolean;
  /** With smart routing: fetch the table again when it is older than this, in ms. Default 30000. */
  topologyMaxAgeMs?: number;
  /** With smart routing: skip a node this long (ms) after it could not be reached. Default 5000. */
  nodeDownMs?: number;
}

export type GrpcPutOptions = Omit<PutOptions, "sloppy">;
export interface GrpcDeleteOptions { ifMatch?: string; w?: Level }
export interface GrpcScanOptions {
  /** Keys per stream message (the node caps it at 1000). */
  pageSize?: number;
  /** Stop after this many keys. */
  limit?: number;
  /** Resume after this key (exclusive). */
  startAfter?: BytesLike;
  /** Deadline of the whole stream, in ms; default the client's `timeoutMs`. */
  timeoutMs?: number;
}

const CODE_NAMES: Record<number, string> = Object.fromEntries(
  Object.entries(grpc.status).filter(([, v]) => typeof v === "number").map(([k, v]) => [v as number, k.toLowerCase()]),
);

function metadataCount(metadata: grpc.Metadata | undefined, name: string): number | undefined {
  const raw = metadata?.get(name)[0];
  if (raw === undefined) return undefined;
  const text = typeof raw === "string" ? raw : raw.toString();
  return /^\d+$/.test(text) ? Number(text) : undefined;
}

/** grpc-js's own UNAVAILABLE (no connection, reset), as opposed to the node's answer. */
function unreachable(details: string): boolean {
  return /no connection established|failed to connect|connection refused|econnrefused|econnreset|connection dropped|socket closed|name resolution|dns resolution|ehostunreach|enetunreach/i
    .test(details);
}

function connectFailed(details: string): boolean {
  return /no connection established|failed to connect|connection refused|econnrefused|name resolution|dns resolution|ehostunreach|enetunreach/i
    .test(details);
}

/**
 * The typed error for a gRPC status (see the README's table). `status` is always
 * `undefined` (there is no HTTP status); `code` is the class's code, or the gRPC
 * status name in lower case for a `ServerError`. The grpc-js error is the `cause`.
 */
export function errorFromStatus(code: number, details: string, metadata?: grpc.Metadata, cause?: unknown,
                                context = ""): DhashmapError {
  const message = (context ? `${context}: ` : "") + (details || CODE_NAMES[code] || `gRPC status ${code}`);
  const options = { cause };
  switch (code) {
    case grpc.status.NOT_FOUND: return new NotFoundError(message, options);
    case grpc.status.FAILED_PRECONDITION: return new PreconditionFailedError(message, options);
    case grpc.status.INVALID_ARGUMENT: return new InvalidRequestError(message, options);
    case grpc.status.PERMISSION_DENIED: return new ForbiddenError(message, options);
    case grpc.status.RESOURCE_EXHAUSTED: {
      // The node says which limit in its message ("the key is N bytes; ...", "the value is ...").
      // (The store's "is full" first: its message names the store's path, which may say "key".)
      const lowered = details.toLowerCase();
      if (/\bfull\b|no room|no space|map size/.test(lowered)) return new StorageFullError(message, options);
      if (lowered.includes("key")) return new KeyTooLongError(message, options);
      return new ValueTooLargeError(message, options);
    }
    case grpc.status.UNAVAILABLE: {
      const acks = metadataCount(metadata, "acks");
      const required = metadataCount(metadata, "required");
      if (acks === undefined && required === undefined && unreachable(details)) {
        return new ConnectionError(`cannot reach the node: ${message}`, { ...options, connectFailed: connectFailed(details) });
      }
      return new UnavailableError(message, { ...options, acks, required });
    }
    case grpc.status.DEADLINE_EXCEEDED: return new TimeoutError(`no answer in time: ${message}`, options);
    case grpc.status.CANCELLED: return new ConnectionError(`the call was cancelled: ${message}`, { ...options, code: "cancelled" });
    default: return new ServerError(message, { ...options, code: CODE_NAMES[code] ?? "unknown" });
  }
}

function fromServiceError(error: unknown, context: string): unknown {
  const e = error as Partial<grpc.ServiceError> | null;
  if (e && typeof e.code === "number") return errorFromStatus(e.code, e.details ?? e.message ?? "", e.metadata, error, context);
  return error;
}

function quorum(level: Level | undefined, name: string): Quorum | undefined {
  const checked = checkLevel(level, name);
  switch (checked) {
    case undefined: return undefined;
    case "one": return { level: 1, count: 0 };
    case "quorum": return { level: 2, count: 0 };
    case "all": return { level: 3, count: 0 };
    default: {
      const count = Number(checked);
      if (count > 0xffffffff) throw new RangeError(`${name} must be at most ${0xffffffff}, not ${count}`);
      return { level: 0, count };
    }
  }
}

function ttl(seconds: number | undefined): string | undefined {
  const checked = checkTtl(seconds);
  if (checked !== undefined && Number(checked) < 1) throw new RangeError(`ttlSeconds must be at least 1, not ${checked}`);
  return checked;
}

/** A version token as the node wants it: no quotes. `"*"` has no gRPC form. */
function bareVersion(version: string, name: string): string {
  const quoted = quoteVersion(version);
  if (quoted === "*") throw new RangeError(`${name}: "*" (any live value) has no gRPC form; give a version token`);
  return quoted.slice(1, -1);
}

function key(k: BytesLike, what = "key"): Buffer {
  const bytes = toBytes(k, what);
  if (what === "key" && bytes.byteLength === 0) throw new RangeError("a key must have at least one byte");
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

/** A copy as a plain Uint8Array (a decoded Buffer may share a larger allocation). */
function bytesOut(b: Buffer | Uint8Array | undefined): Uint8Array {
  return b === undefined ? new Uint8Array() : new Uint8Array(b);
}

function version(response: VersionResponse, context: string): string {
  if (!response.version) throw new BadResponseError(`${context}: the node sent no version`);
  return response.version;
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function positive(value: number | undefined, fallback: number, name: string, allowZero = false): number {
  if (value === undefined) return fallback;
  if (typeof value !== "number" || !Number.isFinite(value) || value < 0 || (!allowZero && value === 0)) {
    throw new RangeError(`${name} must be a ${allowZero ? "non-negative" : "positive"} number, not ${String(value)}`);
  }
  return value;
}

/** The listing cursor of `GrpcClient.list`: the last key returned, base64url. Only `GrpcClient` reads it. */
function encodeCursor(last: Uint8Array): string {
  return Buffer.from(last).toString("base64url");
}

function decodeCursor(cursor: string): Buffer {
  if (!/^[A-Za-z0-9_-]+$/.test(cursor)) throw new RangeError(`not a cursor of GrpcClient.list: ${JSON.stringify(cursor)}`);
  return Buffer.from(cursor, "base64url");
}

function membersOf(response: MembersResponse): Members {
  return {
    node: response.node,
    members: response.members.map((m): Member => ({
      id: m.id,
      state: m.state,
      addresses: { host: m.host, peer: m.peer_port, rest: m.rest_port, gossip: m.gossip_port, grpc: m.grpc_port },
      weight: m.weight,
      version: m.version,
      incarnation: Number(m.incarnation),
    })),
  };
}

function ringOf(response: RingResponse): Ring {
  if (response.hash && response.hash !== "xxh64") {
    throw new BadResponseError(`the cluster hashes keys with ${response.hash}; this client knows only xxh64`);
  }
  const table = response.table.map((p) => ({ partition: p.partition, owners: [...p.owners] }));
  const nodes = [...new Set(table.flatMap((p) => p.owners))].sort();
  return { partitions: response.partitions, replicas: response.replicas, hash: response.hash || "xxh64", nodes, table };
}

/** A routed call's stub and the gRPC target it talks to. */
interface Routed { stub: Stub; target: string }

/**
 * A client for one dhashmap node's gRPC API: `new GrpcClient("127.0.0.1:9090")`.
 * The node coordinates every request with the key's replicas, as over REST. One
 * client holds one HTTP/2 channel: share it, and `close()` it when done.
 */
export class GrpcClient {
  readonly target: string;
  readonly timeoutMs: number;
  readonly retries: number;
  readonly smartRouting: boolean;
  private readonly backoffMs: number;
  private readonly maxBackoffMs: number;
  private readonly kv: Stub;
  private readonly cluster: Stub;
  private readonly topologyMaxAgeMs: number;
  private readonly nodeDownMs: number;
  private readonly openNode: (target: string) => { kv: Stub; cluster: Stub };
  /** Smart routing: the stubs of the other nodes, by gRPC target, opened on first use. */
  private readonly nodes = new Map<string, { kv: Stub; cluster: Stub }>();
  private closed = false;
  private readonly downUntil = new Map<string, number>();
  private topology: Topology | undefined;
  private refreshing: Promise<Topology | undefined> | undefined;
  /** Smart routing: the table fetches that "not mine" answers (trailing metadata `dhashmap-owners`) made. */
  readonly notMine = new NotMineGate();

  constructor(target = "127.0.0.1:9090", options: GrpcClientOptions = {}) {
    if (typeof target !== "string" || target === "") throw new TypeError("a gRPC target (host:port) is needed");
    this.target = target.replace(/^grpc:\/\//, "");
    this.timeoutMs = positive(options.timeoutMs, 10_000, "timeoutMs");
    this.retries = Math.floor(positive(options.retries, 2, "retries", true));
    this.backoffMs = positive(options.backoffMs, 50, "backoffMs", true);
    this.maxBackoffMs = positive(options.maxBackoffMs, 1000, "maxBackoffMs", true);
    const services = loadServices();
    const credentials = options.credentials ?? grpc.credentials.createInsecure();
    // The node's own limits (--max-value-size) decide; grpc-js's default 4 MiB receive limit would not.
    const channelOptions: grpc.ChannelOptions = {
      "grpc.max_receive_message_length": -1,
      "grpc.max_send_message_length": -1,
      ...options.channelOptions,
    };
    this.openNode = (target: string) => {
      const kv = new services.KV(target, credentials, channelOptions) as unknown as Stub;
      const cluster = new services.Cluster(target, credentials, { ...channelOptions, channelOverride: kv.getChannel() }) as unknown as Stub;
      return { kv, cluster };
    };
    ({ kv: this.kv, cluster: this.cluster } = this.openNode(this.target));
    this.nodes.set(this.target, { kv: this.kv, cluster: this.cluster });
    this.smartRouting = options.smartRouting ?? false;
    this.topologyMaxAgeMs = positive(options.topologyMaxAgeMs, 30_000, "topologyMaxAgeMs");
    this.nodeDownMs = positive(options.nodeDownMs, 5000, "nodeDownMs", true);
  }

  /** Close the channels (the other nodes' too, with smart routing); calls in flight fail with `ConnectionError` (CANCELLED). */
  close(): void {
    this.closed = true; // a routed call that picks its node after this finds no channel to open
    for (const node of this.nodes.values()) node.kv.close();
    this.nodes.clear();
    this.nodes.set(this.target, { kv: this.kv, cluster: this.cluster });
  }

  /**
   * Where smart routing sends `key`: its partition, its preference list and the gRPC
   * target chosen now. Fetches the partition table if needed. For debugging and tests.
   */
  async route(k: BytesLike): Promise<{ partition: number; owners: string[]; target: string }> {
    const bytes = key(k);
    const topology = await this.currentTopology(true);
    if (topology === undefined) throw new BadResponseError("no partition table could be fetched");
    return { partition: topology.partition(bytes), owners: topology.ownersOf(bytes), target: this.targetFor(bytes, topology) };
  }

  /** Forget the partition table; the next routed request fetches it again. */
  invalidateTopology(): void {
    this.topology = undefined;
  }

  // -- key operations -------------------------------------------------------------------

  /** The live value of `key` and its version; `NotFoundError` when there is none. */
  async get(k: BytesLike, options: GetOptions = {}): Promise<Value> {
    const bytes = key(k);
    const response = await this.keyed<GetResponse>(bytes, "Get", { key: bytes, r: quorum(options.r, "r") }, true);
    return { value: bytesOut(response.value), version: version(response, "Get") };
  }

  /** Like `get`, but `undefined` instead of `NotFoundError` for an absent key. */
  async tryGet(k: BytesLike, options: GetOptions = {}): Promise<Value | undefined> {
    try {
      return await this.get(k, options);
    } catch (error) {
      if (error instanceof NotFoundError) return undefined;
      throw error;
    }
  }

  /**
   * Store `value` under `key`; returns the new version. With `ifMatch` (a version
   * token) or `ifNoneMatch: true` the write goes through CompareAndSwap, since
   * PutRequest has no condition. `ifMatch: "*"` has no gRPC form (RangeError).
   */
  async put(k: BytesLike, value: BytesLike, options: GrpcPutOptions = {}): Promise<string> {
    if ((options as PutOptions).sloppy !== undefined) throw new RangeError("sloppy has no gRPC form; use the REST Client");
    if (options.ifMatch !== undefined && options.ifNoneMatch) {
      throw new RangeError("give ifMatch or ifNoneMatch, not both");
    }
    if (options.ifMatch !== undefined || options.ifNoneMatch) {
      return this.compareAndSwap(k, options.ifMatch ?? null, value, { ttlSeconds: options.ttlSeconds, w: options.w });
    }
    const request = { key: key(k), value: key(value, "value"), ttl_seconds: ttl(options.ttlSeconds), w: quorum(options.w, "w") };
    return version(await this.keyed<VersionResponse>(request.key, "Put", request, false), "Put");
  }

  /** Delete `key`; deleting an absent key succeeds. With `ifMatch`, only if the value still has that version. */
  async delete(k: BytesLike, options: GrpcDeleteOptions = {}): Promise<void> {
    const ifMatch = options.ifMatch === undefined ? "" : bareVersion(options.ifMatch, "ifMatch");
    const bytes = key(k);
    await this.keyed(bytes, "Delete", { key: bytes, if_match: ifMatch, w: quorum(options.w, "w") }, ifMatch === "");
  }

  /**
   * Write `value` only if the key's current version is `expectedVersion` (`null`:
   * only if the key has no live value). `PreconditionFailedError` when it is not.
   */
  async compareAndSwap(k: BytesLike, expectedVersion: string | null, value: BytesLike,
                       options: Omit<GrpcPutOptions, "ifMatch" | "ifNoneMatch"> = {}): Promise<string> {
    const request = {
      key: key(k),
      expected_version: expectedVersion === null ? "" : bareVersion(expectedVersion, "expectedVersion"),
      create_only: expectedVersion === null,
      value: key(value, "value"),
      ttl_seconds: ttl(options.ttlSeconds),
      w: quorum(options.w, "w"),
    };
    return version(await this.keyed<VersionResponse>(request.key, "CompareAndSwap", request, false), "CompareAndSwap");
  }

  // -- batches ---------------------------------------------------------------------------

  /** Read many keys with BatchGet (1000 per call); aligned with `keys`, `undefined` where a key has no value. */
  async batchGet(keys: Iterable<BytesLike>, options: GetOptions = {}): Promise<(Value | undefined)[]> {
    const all = [...keys].map((k) => key(k));
    const r = quorum(options.r, "r");
    const out: (Value | undefined)[] = [];
    for (let i = 0; i < all.length; i += MAX_BATCH) {
      const chunk = all.slice(i, i + MAX_BATCH);
      const response = await this.unary<BatchGetResponse>(this.kv, "BatchGet", { keys: chunk, r }, true);
      if (response.items.length !== chunk.length) {
        throw new BadResponseError(`BatchGet: ${response.items.length} items for ${chunk.length} keys`);
      }
      for (const item of response.items) {
        out.push(item.found ? { value: bytesOut(item.value), version: item.version } : undefined);
      }
    }
    return out;
  }

  /**
   * Write many items with BatchPut (1000 per call); returns their versions, aligned.
   * The node writes each item on its own: if any fails, the first failure is
   * thrown (as its typed error) and the other items may have been written.
   * `w` applies to the whole call: an item's own `w` must be the same.
   */
  async batchPut(items: Iterable<BatchItem>, options: { w?: Level } = {}): Promise<string[]> {
    let w = options.w;
    const all = [...items].map((item) => {
      if (Array.isArray(item)) return { key: key(item[0] as BytesLike), value: key(item[1] as BytesLike, "value"), ttl_seconds: undefined };
      const it = item as Exclude<BatchItem, readonly unknown[]>;
      if (it.w !== undefined) {
        if (w !== undefined && checkLevel(w, "w") !== checkLevel(it.w, "w")) {
          throw new RangeError("a gRPC batch has one w for all its items");
        }
        w = it.w;
      }
      return { key: key(it.key), value: key(it.value, "value"), ttl_seconds: ttl(it.ttlSeconds) };
    });
    const q = quorum(w, "w");
    const versions: string[] = [];
    for (let i = 0; i < all.length; i += MAX_BATCH) {
      const chunk = all.slice(i, i + MAX_BATCH);
      const response = await this.unary<BatchPutResponse>(this.kv, "BatchPut", { items: chunk, w: q }, false);
      if (response.results.length !== chunk.length) {
        throw new BadResponseError(`BatchPut: ${response.results.length} results for ${chunk.length} items`);
      }
      for (const result of response.results) {
        if (result.code !== 0) throw errorFromStatus(result.code, result.message, undefined, undefined, "BatchPut");
        if (!result.version) throw new BadResponseError("BatchPut: the node sent no version");
        versions.push(result.version);
      }
    }
    return versions;
  }

  // -- listing ---------------------------------------------------------------------------

  /**
   * One page of live keys with `prefix`, in byte order (a Scan with a limit). The
   * cursor is this client's own (the last key, base64url): pass it back to
   * `GrpcClient.list`, not to the REST client.
   */
  async list(prefix: BytesLike = "", options: ListOptions = {}): Promise<Page> {
    const limit = options.limit ?? DEFAULT_LIST_LIMIT;
    if (!Number.isInteger(limit) || limit < 1) throw new RangeError(`limit must be a positive integer, not ${limit}`);
    const keys: Uint8Array[] = [];
    const scanOptions: GrpcScanOptions = { limit: limit + 1, pageSize: Math.min(limit + 1, 1000) };
    if (options.cursor) scanOptions.startAfter = decodeCursor(options.cursor);
    // The page is read whole before it is returned, so a Scan that failed may be read again
    // (as the idempotent unary calls are: after UNAVAILABLE, or a connection that broke).
    for (let attempt = 0; ; attempt++) {
      try {
        for await (const k of this.scan(prefix, scanOptions)) keys.push(k);
        break;
      } catch (error) {
        const retryable = (error instanceof UnavailableError || error instanceof ConnectionError)
          && error.code !== "cancelled";
        if (!retryable || attempt >= this.retries) throw error;
        keys.length = 0;
        const step = Math.min(this.maxBackoffMs, this.backoffMs * 2 ** attempt);
        await sleep(step / 2 + Math.random() * (step / 2));
      }
    }
    // One key more than asked says whether there is a next page.
    if (keys.length <= limit) return { keys, cursor: null };
    keys.length = limit;
    return { keys, cursor: encodeCursor(keys[limit - 1]!) };
  }

  /**
   * Every live key with `prefix`, in byte order, from the Scan server stream:
   * `for await (const key of client.scan("user/")) ...`. Leaving the loop early
   * cancels the stream. The deadline (`timeoutMs`) covers the whole stream.
   */
  async *scan(prefix: BytesLike = "", options: GrpcScanOptions = {}): AsyncGenerator<Uint8Array, void, undefined> {
    const pageSize = options.pageSize ?? 0;
    const limit = options.limit ?? 0;
    for (const [name, n] of [["pageSize", pageSize], ["limit", limit]] as const) {
      if (!Number.isInteger(n) || n < 0 || n > 0xffffffff) throw new RangeError(`${name} must be a non-negative integer, not ${n}`);
    }
    const request = {
      prefix: key(prefix, "prefix"),
      page_size: pageSize,
      limit,
      start_after: options.startAfter === undefined ? Buffer.alloc(0) : key(options.startAfter, "startAfter"),
      has_start_after: options.startAfter !== undefined,
    };
    const timeoutMs = positive(options.timeoutMs, this.timeoutMs, "timeoutMs");
    const call = (this.kv.Scan as ServerStream)(request, new grpc.Metadata(), { deadline: Date.now() + timeoutMs });
    let done = false;
    try {
      for await (const message of call as AsyncIterable<ScanResponse>) {
        for (const k of message.keys) yield bytesOut(k);
      }
      done = true;
    } catch (error) {
      done = true;
      throw fromServiceError(error, "Scan");
    } finally {
      if (!done) call.cancel();
    }
  }

  // -- cluster ---------------------------------------------------------------------------

  /** Cluster.Members, in the shape of the REST `members()` (with `addresses.grpc` too). */
  async members(): Promise<Members> {
    return membersOf(await this.unary<MembersResponse>(this.cluster, "Members", {}, true));
  }

  /** Cluster.Ring, in the shape of the REST `ring()`; `nodes` is every owner named in the table, sorted. */
  async ring(): Promise<Ring> {
    return ringOf(await this.unary<RingResponse>(this.cluster, "Ring", {}, true));
  }

  // -- calls ----------------------------------------------------------------------------

  private call<T>(stub: Stub, method: string, request: object, onStatus?: (status: grpc.StatusObject) => void): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const call = (stub[method] as Unary)(request, new grpc.Metadata(), { deadline: Date.now() + this.timeoutMs }, (error, response) => {
        if (error) reject(error);
        else resolve(response as T);
      });
      if (onStatus !== undefined) call.on("status", onStatus);
    });
  }

  /** A routed call's status: trailing metadata `dhashmap-owners` means the table in hand is stale. */
  private readonly routedStatus = (status: grpc.StatusObject): void => {
    if (status.metadata.get(OWNERS_HEADER).length > 0 && this.notMine.shouldRefresh()) {
      this.refreshTopology().catch(() => undefined);
    }
  };

  /**
   * One unary call with the client's deadline. Idempotent calls are tried again
   * after UNAVAILABLE (the node's, or no connection); a connection that could not
   * be made is retried for any call. DEADLINE_EXCEEDED is never retried.
   */
  private async unary<T>(stub: Stub | (() => Promise<Routed>), method: string, request: object,
                         idempotent: boolean): Promise<T> {
    for (let attempt = 0; ; attempt++) {
      const routed = typeof stub === "function" ? await stub() : undefined;
      try {
        return await this.call<T>(routed?.stub ?? (stub as Stub), method, request,
                                  routed !== undefined ? this.routedStatus : undefined);
      } catch (raw) {
        const error = fromServiceError(raw, method);
        if (routed !== undefined && error instanceof ConnectionError && error.code !== "cancelled") {
          this.nodeFailed(routed.target);
        }
        const retryable = (error instanceof ConnectionError && error.connectFailed)
          || (idempotent && (error instanceof UnavailableError || error instanceof ConnectionError) && error.code !== "cancelled");
        if (!retryable || attempt >= this.retries) throw error;
        const step = Math.min(this.maxBackoffMs, this.backoffMs * 2 ** attempt);
        await sleep(step / 2 + Math.random() * (step / 2));
      }
    }
  }

  // -- smart routing ----------------------------------------------------------------------

  /** A keyed call: to the key's first live owner with smart routing (chosen again on each try), else to the target. */
  private keyed<T>(k: Uint8Array, method: string, request: object, idempotent: boolean): Promise<T> {
    if (!this.smartRouting) return this.unary<T>(this.kv, method, request, idempotent);
    return this.unary<T>(async () => {
      const target = this.targetFor(k, await this.currentTopology(false));
      return { stub: this.node(target).kv, target };
    }, method, request, idempotent);
  }

  private node(target: string): { kv: Stub; cluster: Stub } {
    if (this.closed) throw new ConnectionError(`the client was closed (${target})`, { code: "cancelled" });
    let node = this.nodes.get(target);
    if (node === undefined) {
      node = this.openNode(target);
      this.nodes.set(target, node);
    }
    return node;
  }

  private isDown(target: string, now: number): boolean {
    const until = this.downUntil.get(target);
    if (until === undefined) return false;
    if (until <= now) {
      this.downUntil.delete(target);
      return false;
    }
    return true;
  }

  private targetFor(k: Uint8Array, topology: Topology | undefined): string {
    if (topology !== undefined) {
      const now = Date.now();
      const owner = topology.liveOwnerUrls(k).find((target) => !this.isDown(target, now));
      if (owner !== undefined) return owner;
    }
    return this.target;
  }

  /** A routed node could not be reached: skip it for a while and fetch the table again. */
  private nodeFailed(target: string): void {
    if (this.nodeDownMs > 0 && target !== this.target) this.downUntil.set(target, Date.now() + this.nodeDownMs);
    this.refreshTopology().catch(() => undefined);
  }

  private async currentTopology(wait: boolean): Promise<Topology | undefined> {
    const topology = this.topology;
    if (topology !== undefined && Date.now() - topology.fetchedAt < this.topologyMaxAgeMs) return topology;
    const refresh = this.refreshTopology();
    if (topology !== undefined && !wait) {
      // With a table in hand, use it while a newer one is fetched; nobody awaits that fetch,
      // so its failure must not become an unhandled rejection (Node exits on those).
      refresh.catch(() => undefined);
      return topology;
    }
    return refresh;
  }

  /** Ring and members over gRPC from the target, else from another live member; one refresh at a time. */
  private refreshTopology(): Promise<Topology | undefined> {
    this.refreshing ??= (async () => {
      try {
        const candidates = [this.target];
        for (const target of this.topology?.addresses() ?? []) {
          if (!candidates.includes(target)) candidates.push(target);
        }
        for (const target of candidates) {
          if (target !== this.target && this.isDown(target, Date.now())) continue;
          try {
            const node = this.node(target);
            const [ring, members] = await Promise.all([
              this.call<RingResponse>(node.cluster, "Ring", {}), this.call<MembersResponse>(node.cluster, "Members", {})]);
            this.topology = new Topology(ringOf(ring), membersOf(members), new URL(`grpc://${this.target}`), Date.now(), "grpc");
            return this.topology;
          } catch {
            // This one cannot say (gone, shut down, a table it cannot make sense of): the next may.
          }
        }
        return this.topology; // none answered: keep what we had (possibly nothing)
      } finally {
        this.refreshing = undefined;
      }
    })();
    return this.refreshing;
  }
}
