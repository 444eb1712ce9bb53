/** A live 3-node dhashmap cluster (memory storage, free loopback ports) for the integration tests. */

import { type ChildProcess, spawn } from "node:child_process";
import { accessSync, constants, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { freePorts } from "./fake.js";

const here = dirname(fileURLToPath(import.meta.url)); // clients/js/build/test
const packageRoot = resolve(here, "..", "..");

export function twistdPath(): string {
  return process.env.DHASHMAP_TWISTD ?? resolve(packageRoot, "..", "..", ".venv", "bin", "twistd");
}

export interface LiveNode {
  id: string;
  url: string;
  restPort: number;
  peerPort: number;
  /** The gRPC port, or 0 when the node serves no gRPC (the default). */
  grpcPort: number;
  process: ChildProcess;
  output: string[];
}

export interface LiveCluster {
  nodes: LiveNode[];
  stop(): Promise<void>;
}

async function getJson(url: string): Promise<unknown> {
  const response = await fetch(url, { signal: AbortSignal.timeout(1000) });
  if (response.status !== 200) throw new Error(`${url}: HTTP ${response.status}`);
  return response.json();
}

function stopNode(node: LiveNode): Promise<void> {
  const child = node.process;
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolvePromise) => {
    const kill = setTimeout(() => child.kill("SIGKILL"), 5000);
    child.once("exit", () => {
      clearTimeout(kill);
      resolvePromise();
    });
    child.kill("SIGTERM");
  });
}

/**
 * Start three nodes and wait (polling, with a deadline) until each is ready and
 * sees all three members alive. Throws, failing the tests, when twistd is missing.
 */
export async function startCluster(size = 3, deadlineMs = 60_000, options: { grpc?: boolean } = {}): Promise<LiveCluster> {
  const twistd = twistdPath();
  try {
    accessSync(twistd, constants.X_OK);
  } catch {
    throw new Error(`twistd not found at ${twistd}: set DHASHMAP_TWISTD or create the venv: make .venv/.installed at the repository root`);
  }
  const dataDir = mkdtempSync(join(tmpdir(), "dhashmap-js-"));
  const ports = await freePorts(size * (options.grpc ? 3 : 2));
  const peerPorts = ports.slice(size, size * 2);
  const grpcPorts = options.grpc ? ports.slice(size * 2) : [];
  const seeds = peerPorts.map((p) => `127.0.0.1:${p}`).join(",");
  const nodes: LiveNode[] = [];
  const cluster: LiveCluster = {
    nodes,
    async stop() {
      await Promise.all(nodes.map(stopNode));
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
  for (let i = 0; i < size; i++) {
    const id = `j${i + 1}`;
    const restPort = ports[i]!;
    const peerPort = peerPorts[i]!;
    const grpcPort = grpcPorts[i] ?? 0;
    const args = [
      "-n", "10", twistd, "-n", "--pidfile=", "dhashmap", "--node-id", id, "--bind", "127.0.0.1",
      "--port", String(restPort), "--peer-port", String(peerPort), "--grpc-port", String(grpcPort), "--data-dir", join(dataDir, id),
      "--storage", "memory", "--seed-nodes", seeds,
    ];
    const child = spawn("nice", args, { stdio: ["ignore", "pipe", "pipe"] });
    const output: string[] = [];
    const keep = (chunk: Buffer) => {
      output.push(chunk.toString());
      if (output.length > 200) output.shift();
    };
    child.stdout?.on("data", keep);
    child.stderr?.on("data", keep);
    nodes.push({ id, url: `http://127.0.0.1:${restPort}`, restPort, peerPort, grpcPort, process: child, output });
  }
  try {
    const deadline = Date.now() + deadlineMs;
    for (const node of nodes) {
      for (;;) {
        if (node.process.exitCode !== null) {
          throw new Error(`node ${node.id} exited (${node.process.exitCode}):\n${node.output.join("")}`);
        }
        try {
          await getJson(`${node.url}/ready`);
          const { members } = (await getJson(`${node.url}/v1/cluster/members`)) as { members: { state: string }[] };
          if (members.length === size && members.every((m) => m.state === "alive")) break;
        } catch {
          // not up yet
        }
        if (Date.now() > deadline) {
          throw new Error(`node ${node.id} not ready with ${size} members alive in ${deadlineMs} ms:\n${node.output.join("")}`);
        }
        await new Promise((r) => setTimeout(r, 100));
      }
    }
  } catch (error) {
    await cluster.stop();
    throw error;
  }
  return cluster;
}

/** `dhashmap_requests_total` of one node, summed per op. */
export async function requestCounts(url: string): Promise<Record<string, number>> {
  const response = await fetch(`${url}/metrics`, { signal: AbortSignal.timeout(2000) });
  const text = await response.text();
  const counts: Record<string, number> = {};
  for (const line of text.split("\n")) {
    const m = /^dhashmap_requests_total\{([^}]*)\}\s+([0-9.e+]+)/.exec(line);
    if (!m) continue;
    const op = /op="([^"]*)"/.exec(m[1]!)?.[1] ?? "";
    counts[op] = (counts[op] ?? 0) + Number(m[2]);
  }
  return counts;
}
