/** The client: operations, retries, and the choice of node for each request. */

import {
  type BytesLike,
  type Level,
  type Page,
  DEFAULT_LIST_LIMIT,
  KV_PATH,
  checkLevel,
  checkTtl,
  keyPath,
  parsePage,
  query,
  quoteBytes,
  quoteVersion,
  toBytes,
  versionFromEtag,
} from "./codec.js";
import {
  BadResponseError,
  ConnectionError,
  DhashmapError,
  NotFoundError,
  TransportError,
  errorFromResponse,
} from "./errors.js";
import { type FetchLike, type HttpResponse, HttpTransport } from "./http.js";
import { type Members, NotMineGate, OWNERS_HEADER, type Ring, Topology, parseMembers, parseRing } from "./routing.js";

/** A value read from the store and its version token (opaque: pass it back to make a write conditional). */
export interface Value {
  value: Uint8Array;
  version: string;
}

export interface ClientOptions {
  /** Deadline for each HTTP exchange (connect, send, headers and body), in ms. Default 10000. */
  timeoutMs?: number;
  /** How many times a failed request may be tried again (see "Retries" in the README). Default 2. */
  retries?: number;
  /** First backoff before a retry, in ms; doubled each time, with jitter. Default 50. */
  backoffMs?: number;
  /** Upper bound of one backoff, in ms. Default 1000. */
  maxBackoffMs?: number;
  /**
   * Treat an unconditional `put` as idempotent and retry it after a 503 or a
   * broken connection. Off by default: a replayed put makes a second version
   * and can overwrite a newer write made in between by someone else.
   */
  retryPuts?: boolean;
  /** Send each key's request to the first live owner of its partition (see the README). Default false. */
  smartRouting?: boolean;
  /** With smart routing: refresh the partition table and members after this many ms. Default 30000. */
  topologyMaxAgeMs?: number;
  /** How long a node that refused a connection is avoided, in ms. Default 5000. */
  nodeDownMs?: number;
  /** Most requests in flight for one `batchGet` / `batchPut`. Default 16. */
  batchConcurrency?: number;
  /** A `fetch` to use instead of the global one (tests, instrumentation). */
  fetch?: FetchLike;
  /** An undici `Dispatcher` (e.g. an `Agent` with its own pool and keep-alive settings), passed to fetch. */
  dispatcher?: unknown;
}

export interface GetOptions {
  /** Replicas that must answer the read. */
  r?: Level;
}

export interface PutOptions {
  /** Whole seconds after which the value expires (1 to 315,360,000). Without it the value never expires. */
  ttlSeconds?: number;
  /** Replicas that must have the write on disk before it is acknowledged. */
  w?: Level;
  /** A version token the current value must have, or `"*"`: "any live value". */
  ifMatch?: string;
  /** `true`: write only if the key has no live value (create only). */
  ifNoneMatch?: boolean;
  /** Override the node's sloppy-quorum setting for this write. */
  sloppy?: boolean;
}

export interface DeleteOptions {
  ifMatch?: string;
  w?: Level;
  sloppy?: boolean;
}

export interface ListOptions {
  /** Keys per page, 1 to 10,000. Default 1000. */
  limit?: number;
  /** The previous page's cursor. */
  cursor?: string | null;
}

export type BatchItem =
  | readonly [key: BytesLike, value: BytesLike]
  | { key: BytesLike; value: BytesLike; ttlSeconds?: number; w?: Level };

interface Send {
  method: string;
  path: string;
  /** The key, for routing; undefined for requests that any node answers the same. */
  key?: Uint8Array | undefined;
  body?: Uint8Array | undefined;
  headers?: Record<string, string> | undefined;
  /** Can the request be replayed after it may have reached the node? */
  idempotent: boolean;
}

function normaliseUrl(raw: string): URL {
  const url = new URL(raw);
  if (url.protocol !== "http:" && url.protocol !== "https:") {
    throw new TypeError(`a node URL must be http:// or https://, not ${JSON.stringify(raw)}`);
  }
  if (url.search || url.hash) throw new TypeError(`a node URL must not have a query or fragment: ${JSON.stringify(raw)}`);
  return url;
}

/** The URL every path is appended to: a path in it (a node behind a proxy at /dhm/) prefixes every request. */
function baseOf(url: URL): string {
  return `${url.protocol}//${url.host}${url.pathname.replace(/\/+$/, "")}`;
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

/**
 * A client for a dhashmap cluster, over the REST API.
 *
 * `new Client("http://127.0.0.1:8080")`, or with several node URLs, which are
 * tried in turn when one cannot be reached; with `{smartRouting: true}` each
 * key's request goes to the key's first live owner. One client should be
 * shared: fetch pools and keeps alive its connections.
 */
export class Client {
  readonly urls: readonly string[];
  readonly timeoutMs: number;
  readonly retries: number;
  readonly smartRouting: boolean;
  private readonly seeds: URL[];
  private readonly transport: HttpTransport;
  private readonly backoffMs: number;
  private readonly maxBackoffMs: number;
  private readonly retryPuts: boolean;
  private readonly topologyMaxAgeMs: number;
  private readonly nodeDownMs: number;
  private readonly batchConcurrency: number;
  private current = 0;
  private readonly downUntil = new Map<string, number>();
  private topology: Topology | undefined;
  private refreshing: Promise<Topology | undefined> | undefined;
  /** Smart routing: the table fetches that "not mine" answers (`Dhashmap-Owners`) made. */
  readonly notMine = new NotMineGate();

  constructor(urls: string | readonly string[] = "http://127.0.0.1:8080", options: ClientOptions = {}) {
    const list = typeof urls === "string" ? [urls] : [...urls];
    if (list.length === 0) throw new TypeError("at least one node URL is needed");
    this.seeds = list.map(normaliseUrl);
    this.urls = this.seeds.map(baseOf);
    this.timeoutMs = positive(options.timeoutMs, 10_000, "timeoutMs");
    this.retries = Math.floor(positive(options.retries, 2, "retries", true));
    this.backoffMs = positive(options.backoffMs, 50, "backoffMs", true);
    this.maxBackoffMs = positive(options.maxBackoffMs, 1000, "maxBackoffMs", true);
    this.retryPuts = options.retryPuts ?? false;
    this.smartRouting = options.smartRouting ?? false;
    this.topologyMaxAgeMs = positive(options.topologyMaxAgeMs, 30_000, "topologyMaxAgeMs");
    this.nodeDownMs = positive(options.nodeDownMs, 5000, "nodeDownMs", true);
    this.batchConcurrency = Math.floor(positive(options.batchConcurrency, 16, "batchConcurrency"));
    const fetchImpl: FetchLike = options.fetch ?? ((input, init) => fetch(input, init));
    this.transport = new HttpTransport(fetchImpl, options.dispatcher === undefined ? {} : { dispatcher: options.dispatcher });
  }

  // -- key operations -------------------------------------------------------------------

  /** The live value of `key` and its version; `NotFoundError` when there is none. */
  async get(key: BytesLike, options: GetOptions = {}): Promise<Value> {
    const k = toBytes(key, "key");
    const path = keyPath(k) + query({ r: checkLevel(options.r, "r") });
    const response = await this.send({ method: "GET", path, key: k, idempotent: true });
    if (response.status !== 200) throw errorFromResponse(response.status, response.body, `GET ${path}`);
    return { value: response.body, version: versionFromEtag(response.headers.get("etag")) };
  }

  /** Like `get`, but `undefined` instead of `NotFoundError` for an absent key. */
  async tryGet(key: BytesLike, options: GetOptions = {}): Promise<Value | undefined> {
    try {
      return await this.get(key, options);
    } catch (error) {
      if (error instanceof NotFoundError) return undefined;
      throw error;
    }
  }

  /** Store `value` under `key`; returns the new version token. */
  async put(key: BytesLike, value: BytesLike, options: PutOptions = {}): Promise<string> {
    const k = toBytes(key, "key");
    const body = toBytes(value, "value");
    const headers: Record<string, string> = { "content-type": "application/octet-stream" };
    if (options.ifMatch !== undefined) headers["if-match"] = quoteVersion(options.ifMatch);
    if (options.ifNoneMatch) headers["if-none-match"] = "*";
    const conditional = options.ifMatch !== undefined || options.ifNoneMatch === true;
    const path = keyPath(k) + query({
      ttl: checkTtl(options.ttlSeconds),
      w: checkLevel(options.w, "w"),
      sloppy: options.sloppy === undefined ? undefined : String(options.sloppy),
    });
    const response = await this.send({
      method: "PUT", path, key: k, body, headers, idempotent: this.retryPuts && !conditional,
    });
    if (response.status !== 200 && response.status !== 201 && response.status !== 204) {
      throw errorFromResponse(response.status, response.body, `PUT ${path}`);
    }
    return versionFromEtag(response.headers.get("etag"));
  }

  /**
   * Delete `key`; deleting an absent key succeeds. With `ifMatch`, only if the
   * value still has that version (else `PreconditionFailedError`).
   */
  async delete(key: BytesLike, options: DeleteOptions = {}): Promise<void> {
    const k = toBytes(key, "key");
    const headers: Record<string, string> = {};
    if (options.ifMatch !== undefined) headers["if-match"] = quoteVersion(options.ifMatch);
    const path = keyPath(k) + query({
      w: checkLevel(options.w, "w"),
      sloppy: options.sloppy === undefined ? undefined : String(options.sloppy),
    });
    const response = await this.send({
      method: "DELETE", path, key: k, headers, idempotent: options.ifMatch === undefined,
    });
    if (response.status !== 200 && response.status !== 204) {
      throw errorFromResponse(response.status, response.body, `DELETE ${path}`);
    }
  }

  /**
   * Write `value` only if the key's current version is `expectedVersion`
   * (`null`: only if the key has no live value). Returns the new version;
   * `PreconditionFailedError` means someone else wrote first: read and retry.
   */
  compareAndSwap(key: BytesLike, expectedVersion: string | null, value: BytesLike,
                 options: Omit<PutOptions, "ifMatch" | "ifNoneMatch"> = {}): Promise<string> {
    return expectedVersion === null
      ? this.put(key, value, { ...options, ifNoneMatch: true })
      : this.put(key, value, { ...options, ifMatch: expectedVersion });
  }

  // -- batches ---------------------------------------------------------------------------

  /**
   * Read many keys; the result is aligned with `keys`, `undefined` where a key
   * has no value. Requests run concurrently (at most `batchConcurrency` at a
   * time) until the server has a batch endpoint; the first other error rejects.
   */
  async batchGet(keys: Iterable<BytesLike>, options: GetOptions = {}): Promise<(Value | undefined)[]> {
    return this.pool([...keys], (key) => this.tryGet(key, options));
  }

  /** Write many items (`[key, value]` or `{key, value, ttlSeconds?, w?}`); returns their versions, aligned. */
  async batchPut(items: Iterable<BatchItem>): Promise<string[]> {
    return this.pool([...items], (item) => {
      if (Array.isArray(item)) return this.put(item[0] as BytesLike, item[1] as BytesLike);
      const { key, value, ...rest } = item as Exclude<BatchItem, readonly unknown[]>;
      return this.put(key, value, rest);
    });
  }

  private async pool<T, R>(inputs: T[], work: (input: T) => Promise<R>): Promise<R[]> {
    const results = new Array<R>(inputs.length);
    let next = 0;
    let failure: { error: unknown } | undefined;
    const worker = async (): Promise<void> => {
      while (failure === undefined && next < inputs.length) {
        const index = next++;
        try {
          results[index] = await work(inputs[index]!);
        } catch (error) {
          failure ??= { error };
        }
      }
    };
    await Promise.all(Array.from({ length: Math.min(this.batchConcurrency, inputs.length) }, worker));
    if (failure !== undefined) throw failure.error;
    return results;
  }

  // -- listing ---------------------------------------------------------------------------

  /**
   * One page of live keys starting with `prefix`, in byte order. A page may be
   * short, even empty, while `cursor` is not `null`: only `null` means the end.
   */
  async list(prefix: BytesLike = "", options: ListOptions = {}): Promise<Page> {
    const limit = options.limit ?? DEFAULT_LIST_LIMIT;
    if (!Number.isInteger(limit) || limit < 1) throw new RangeError(`limit must be a positive integer, not ${limit}`);
    const path = KV_PATH + query({
      prefix: quoteBytes(toBytes(prefix, "prefix")),
      limit: String(limit),
      encoding: "base64",
      cursor: options.cursor ? encodeURIComponent(options.cursor) : undefined,
    });
    const response = await this.send({ method: "GET", path, idempotent: true });
    if (response.status !== 200) throw errorFromResponse(response.status, response.body, `GET ${path}`);
    return parsePage(this.json(response));
  }

  /**
   * Every live key starting with `prefix`, fetching pages lazily:
   * `for await (const key of client.scan("user/")) ...`. Not a snapshot: keys
   * written or deleted meanwhile may or may not appear; each appears at most once.
   */
  async *scan(prefix: BytesLike = "", options: { pageSize?: number } = {}): AsyncGenerator<Uint8Array, void, undefined> {
    let cursor: string | null = null;
    for (;;) {
      const page: Page = await this.list(prefix, { limit: options.pageSize ?? DEFAULT_LIST_LIMIT, cursor });
      yield* page.keys;
      if (page.cursor === null) return;
      if (page.cursor === cursor) throw new BadResponseError("the server returned the same cursor twice");
      cursor = page.cursor;
    }
  }

  // -- cluster ---------------------------------------------------------------------------

  /** `GET /v1/cluster/members`: every member, its state and its addresses. */
  async members(): Promise<Members> {
    return parseMembers(await this.getJson("/v1/cluster/members"));
  }

  /** `GET /v1/cluster/ring`: the partition table. */
  async ring(): Promise<Ring> {
    return parseRing(await this.getJson("/v1/cluster/ring"));
  }

  /** Is a node's process up? `false` also when it cannot be reached. Asks the first URL. */
  health(): Promise<boolean> {
    return this.probe("/health");
  }

  /** Is a node ready to serve? `false` also when it cannot be reached. Asks the first URL. */
  ready(): Promise<boolean> {
    return this.probe("/ready");
  }

  /**
   * Where smart routing sends `key`: its partition, its preference list and
   * the URL chosen now. Fetches the partition table if needed. For debugging and tests.
   */
  async route(key: BytesLike): Promise<{ partition: number; owners: string[]; url: string }> {
    const k = toBytes(key, "key");
    const topology = await this.currentTopology(true);
    if (topology === undefined) throw new DhashmapError("no partition table could be fetched", { code: "no_topology" });
    return { partition: topology.partition(k), owners: topology.ownersOf(k), url: this.targetFor(k, topology) };
  }

  /** Forget the partition table; the next routed request fetches it again. */
  invalidateTopology(): void {
    this.topology = undefined;
  }

  // -- plumbing --------------------------------------------------------------------------

  private async probe(path: string): Promise<boolean> {
    try {
      const response = await this.transport.request({ method: "GET", url: this.urls[0] + path, timeoutMs: this.timeoutMs });
      return response.status === 200;
    } catch (error) {
      if (error instanceof TransportError) return false;
      throw error;
    }
  }

  private async getJson(path: string): Promise<unknown> {
    const response = await this.send({ method: "GET", path, idempotent: true });
    if (response.status !== 200) throw errorFromResponse(response.status, response.body, `GET ${path}`);
    return this.json(response);
  }

  private json(response: HttpResponse): unknown {
    try {
      return JSON.parse(new TextDecoder().decode(response.body));
    } catch (error) {
      throw new BadResponseError("the server sent a body that is not JSON", { cause: error });
    }
  }

  private isDown(url: string, now: number): boolean {
    const until = this.downUntil.get(url);
    if (until === undefined) return false;
    if (until <= now) {
      this.downUntil.delete(url);
      return false;
    }
    return true;
  }

  /** A seed URL: the current one, moving on past seeds that recently refused connections. */
  private seedUrl(): string {
    const now = Date.now();
    for (let i = 0; i < this.urls.length; i++) {
      const index = (this.current + i) % this.urls.length;
      if (!this.isDown(this.urls[index]!, now)) return this.urls[index]!;
    }
    return this.urls[this.current % this.urls.length]!;
  }

  private targetFor(key: Uint8Array | undefined, topology: Topology | undefined): string {
    if (key !== undefined && topology !== undefined) {
      const now = Date.now();
      const owner = topology.liveOwnerUrls(key).find((url) => !this.isDown(url, now));
      if (owner !== undefined) return owner;
    }
    return this.seedUrl();
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

  /** Fetch ring and members from the first seed that answers; one refresh at a time. */
  private refreshTopology(): Promise<Topology | undefined> {
    this.refreshing ??= (async () => {
      try {
        for (let i = 0; i < this.seeds.length; i++) {
          const index = (this.current + i) % this.seeds.length;
          const seed = this.seeds[index]!;
          const base = this.urls[index]!;
          try {
            const [ringResponse, membersResponse] = await Promise.all([
              this.transport.request({ method: "GET", url: base + "/v1/cluster/ring", timeoutMs: this.timeoutMs }),
              this.transport.request({ method: "GET", url: base + "/v1/cluster/members", timeoutMs: this.timeoutMs }),
            ]);
            if (ringResponse.status !== 200 || membersResponse.status !== 200) continue;
            this.topology = new Topology(
              parseRing(this.json(ringResponse)), parseMembers(this.json(membersResponse)), seed, Date.now());
            return this.topology;
          } catch (error) {
            // This seed cannot say (down, or a table it cannot make sense of): the next may.
            if (error instanceof ConnectionError) this.markDown(base);
          }
        }
        return this.topology; // none answered: keep what we had (possibly nothing)
      } finally {
        this.refreshing = undefined;
      }
    })();
    return this.refreshing;
  }

  private markDown(url: string): void {
    if (this.nodeDownMs > 0) this.downUntil.set(url, Date.now() + this.nodeDownMs);
    const index = this.urls.indexOf(url);
    if (index === this.current % this.urls.length) this.current = (index + 1) % this.urls.length;
  }

  private backoff(attempt: number): Promise<void> {
    // Exponential with "equal jitter": half the step fixed, half random, so retries
    // from many clients spread out but none retries immediately.
    const step = Math.min(this.maxBackoffMs, this.backoffMs * 2 ** attempt);
    return sleep(step / 2 + Math.random() * (step / 2));
  }

  /**
   * Send one request, retrying where that cannot apply a write twice:
   * - a connection that could not be made (the request never left): any request;
   * - a 503 answer or a connection that broke after sending: idempotent requests only;
   * - timeouts are not retried: the deadline is the caller's budget.
   */
  private async send(req: Send): Promise<HttpResponse> {
    for (let attempt = 0; ; attempt++) {
      const topology = this.smartRouting && req.key !== undefined ? await this.currentTopology(false) : undefined;
      const base = this.targetFor(req.key, topology);
      const last = attempt >= this.retries;
      try {
        const response = await this.transport.request({
          method: req.method, url: base + req.path, headers: req.headers, body: req.body, timeoutMs: this.timeoutMs,
        });
        if (topology !== undefined && response.headers.get(OWNERS_HEADER) !== null && this.notMine.shouldRefresh()) {
          // "Not mine": the table in hand is stale. Fetch it again in the background.
          this.refreshTopology().catch(() => undefined);
        }
        if (response.status === 503 && req.idempotent && !last) {
          await this.backoff(attempt);
          continue;
        }
        return response;
      } catch (error) {
        if (!(error instanceof ConnectionError)) throw error;
        if (error.connectFailed || req.idempotent) {
          // (A write the node cut short is not a sign it is down: an oversized body meets the
          // node's early 413 and then a reset. Only a failed connection, or a retry, moves on.)
          this.markDown(base);
          if (this.smartRouting) this.refreshTopology().catch(() => undefined);
        }
        if (last || !(error.connectFailed || req.idempotent)) throw error;
        await this.backoff(attempt);
      }
    }
  }
}

