/** Fake dhashmap nodes on node:http, for tests that script the node's answers. */

import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import { readFileSync } from "node:fs";
import { createServer as createNetServer } from "node:net";
import type { AddressInfo } from "node:net";

export interface Seen {
  method: string;
  url: string;
  headers: IncomingMessage["headers"];
  body: Buffer;
}

export type Handler = (req: Seen, res: ServerResponse) => void;

export interface FakeNode {
  url: string;
  port: number;
  seen: Seen[];
  close(): Promise<void>;
}

export async function fakeNode(handler: Handler): Promise<FakeNode> {
  const seen: Seen[] = [];
  const server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => {
      const record = { method: req.method ?? "", url: req.url ?? "", headers: req.headers, body: Buffer.concat(chunks) };
      seen.push(record);
      handler(record, res);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const port = (server.address() as AddressInfo).port;
  return {
    url: `http://127.0.0.1:${port}`,
    port,
    seen,
    close: () => new Promise<void>((resolve) => {
      server.closeAllConnections();
      server.close(() => resolve());
    }),
  };
}

export function json(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { "content-type": "application/json", "content-length": Buffer.byteLength(text), ...headers });
  res.end(text);
}

export function errorJson(res: ServerResponse, status: number, code: string, message: string, extra: object = {}): void {
  json(res, status, { error: { code, message, ...extra } });
}

/**
 * Loopback ports that were free a moment ago, from below the kernel's ephemeral range: an
 * ephemeral port (what listen(0) gives) may be handed to any process's outgoing connection
 * between this pick and the node's own bind ("address already in use"). Held open together so
 * none repeats, then released.
 */
export async function freePorts(n: number): Promise<number[]> {
  const low = ephemeralLow();
  const servers: ReturnType<typeof createNetServer>[] = [];
  const ports: number[] = [];
  for (let tries = 0; ports.length < n; tries++) {
    if (tries > 1000) throw new Error(`no free loopback port in 10000-${low - 1} after 1000 tries`);
    const port = 10000 + Math.floor(Math.random() * (low - 10000));
    const server = await new Promise<ReturnType<typeof createNetServer> | null>((resolve) => {
      const s = createNetServer();
      s.once("error", () => resolve(null)); // in use
      s.listen(port, "127.0.0.1", () => resolve(s));
    });
    if (server !== null) {
      servers.push(server);
      ports.push(port);
    }
  }
  await Promise.all(servers.map((s) => new Promise((resolve) => s.close(resolve))));
  return ports;
}

/** The first port of the kernel's ephemeral range (Linux's default 32768). */
function ephemeralLow(): number {
  try {
    const low = Number(readFileSync("/proc/sys/net/ipv4/ip_local_port_range", "utf8").trim().split(/\s+/)[0]);
    if (Number.isInteger(low) && low > 11000) return low;
  } catch {
    // not Linux: the default
  }
  return 32768;
}
