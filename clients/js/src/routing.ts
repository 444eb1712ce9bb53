/**
 * Smart routing: the partition table and member addresses, fetched from the
 * cluster, tell which node is a key's first live owner. Sending a request
 * there saves the coordinator's hop to a replica; any node gives the same
 * answer, so routing is only ever an optimisation: whenever it cannot decide
 * (no table yet, every owner down) the request goes to a seed URL instead.
 *
 * A node that is not one of a key's owners says so ("not mine": the REST header
 * `Dhashmap-Owners`, the gRPC trailing metadata `dhashmap-owners`), so a client
 * routing by a stale table fetches it again: in the background, at most once per
 * second (`NotMineGate`).
 */

import { BadResponseError } from "./errors.js";
import { partitionOf } from "./xxh64.js";

/** A member as `GET /v1/cluster/members` describes it. */
export interface Member {
  id: string;
  /** `alive`, `suspect` (still routed to), `dead` or `left`. */
  state: string;
  addresses: { host: string; peer: number; rest: number; gossip?: number; grpc?: number };
  weight: number;
  version: string;
  incarnation: number;
}

/** `GET /v1/cluster/members`: the answering node's id and every member it knows. */
export interface Members {
  node: string;
  members: Member[];
}

/** `GET /v1/cluster/ring`: partition count Q, replica count N, and each partition's preference list. */
export interface Ring {
  partitions: number;
  replicas: number;
  hash: string;
  nodes: string[];
  table: { partition: number; owners: string[] }[];
}

export function parseMembers(doc: unknown): Members {
  const d = doc as Partial<Members> | null;
  if (!d || typeof d.node !== "string" || !Array.isArray(d.members)) {
    throw new BadResponseError("the server sent a member list that is not {node, members: [...]}");
  }
  for (const m of d.members) {
    if (!m || typeof m.id !== "string" || typeof m.state !== "string" || typeof m.addresses !== "object") {
      throw new BadResponseError(`the server sent a member that is not valid: ${JSON.stringify(m)}`);
    }
  }
  return d as Members;
}

export function parseRing(doc: unknown): Ring {
  const d = doc as Partial<Ring> | null;
  if (!d || !Number.isInteger(d.partitions) || (d.partitions as number) < 1 || !Array.isArray(d.table)) {
    throw new BadResponseError("the server sent a ring that is not {partitions, table: [...]}");
  }
  if (d.hash !== undefined && d.hash !== "xxh64") {
    throw new BadResponseError(`the cluster hashes keys with ${String(d.hash)}; this client knows only xxh64`);
  }
  return d as Ring;
}

/** The REST header and gRPC trailing metadata of a node that does not own the key it answered for. */
export const OWNERS_HEADER = "dhashmap-owners";

/**
 * Rate limit for the table fetches that "not mine" answers ask for: `shouldRefresh()`
 * is true at most once per `intervalMs`, so a burst of answers routed by one stale
 * table makes one fetch. `refreshes` counts the fetches it allowed.
 */
export class NotMineGate {
  refreshes = 0;
  private last = -Infinity;

  constructor(readonly intervalMs = 1000, private readonly now: () => number = Date.now) {}

  shouldRefresh(): boolean {
    const now = this.now();
    if (now - this.last < this.intervalMs) return false;
    this.last = now;
    this.refreshes++;
    return true;
  }
}

const ROUTABLE = new Set(["alive", "suspect"]);

/**
 * Which port a topology addresses members by: `rest` gives base URLs
 * (`http://host:rest`, the seed's scheme), `grpc` gives `host:grpc` targets.
 */
export type RouteTransport = "rest" | "grpc";

/** One snapshot of the cluster's layout, built from a ring and a member list. */
export class Topology {
  readonly partitions: number;
  private readonly owners: string[][];
  private readonly urls = new Map<string, string>();
  private readonly routable = new Set<string>();

  constructor(ring: Ring, members: Members, seedUrl: URL, readonly fetchedAt: number,
              readonly transport: RouteTransport = "rest") {
    this.partitions = ring.partitions;
    this.owners = Array.from({ length: ring.partitions }, () => [] as string[]);
    for (const row of ring.table) {
      if (Number.isInteger(row.partition) && row.partition >= 0 && row.partition < ring.partitions && Array.isArray(row.owners)) {
        this.owners[row.partition] = row.owners.filter((o) => typeof o === "string");
      }
    }
    for (const m of members.members) {
      const port = m.addresses?.[transport];
      if (typeof port !== "number" || port <= 0) continue;
      let host = m.addresses.host;
      // A node bound to every interface that advertises no address: reach it the way the seed was reached.
      if (!host || host === "0.0.0.0" || host === "::") host = seedUrl.hostname;
      else if (host.includes(":") && !host.startsWith("[")) host = `[${host}]`;
      this.urls.set(m.id, transport === "rest" ? `${seedUrl.protocol}//${host}:${port}` : `${host}:${port}`);
      if (ROUTABLE.has(m.state)) this.routable.add(m.id);
    }
  }

  /** The key's partition. */
  partition(key: Uint8Array): number {
    return partitionOf(key, this.partitions);
  }

  /** Node ids of the key's preference list, in order. */
  ownersOf(key: Uint8Array): string[] {
    return [...(this.owners[this.partition(key)] ?? [])];
  }

  /**
   * Addresses of the key's owners that are alive (or suspect) and have the port, in
   * preference order: REST base URLs, or `host:port` gRPC targets.
   */
  liveOwnerUrls(key: Uint8Array): string[] {
    const out: string[] = [];
    for (const id of this.owners[this.partition(key)] ?? []) {
      const url = this.urls.get(id);
      if (url !== undefined && this.routable.has(id)) out.push(url);
    }
    return out;
  }

  urlOf(nodeId: string): string | undefined {
    return this.urls.get(nodeId);
  }

  /** The addresses of the members that are alive (or suspect). */
  addresses(): string[] {
    return [...this.routable].map((id) => this.urls.get(id)!);
  }
}
