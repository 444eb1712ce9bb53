/**
 * One HTTP exchange on the global `fetch` (undici in Node), with a deadline
 * that covers the whole exchange, body included, and fetch's failures turned
 * into `ConnectionError` / `TimeoutError`. No retries here: which failures may
 * be retried depends on the operation, so the client decides.
 */

import * as http from "node:http";
import * as https from "node:https";
import { ConnectionError, TimeoutError } from "./errors.js";

export interface HttpResponse {
  status: number;
  headers: Headers;
  body: Uint8Array;
}

export interface HttpRequest {
  method: string;
  /** Absolute URL. */
  url: string;
  headers?: Record<string, string> | undefined;
  body?: Uint8Array | undefined;
  timeoutMs: number;
}

/** The `fetch` signature the client needs; injectable for tests and custom agents. */
export type FetchLike = (input: string, init: RequestInit) => Promise<Response>;

/**
 * Error codes after which the request provably never reached a server: no
 * connection was made. Retrying those is safe for every operation, writes too.
 */
const CONNECT_FAILED = new Set([
  "ECONNREFUSED", "ENOTFOUND", "EAI_AGAIN", "EHOSTUNREACH", "ENETUNREACH", "EADDRNOTAVAIL",
  "UND_ERR_CONNECT_TIMEOUT",
]);

function errorCodes(error: unknown, depth = 0): string[] {
  if (typeof error !== "object" || error === null || depth > 4) return [];
  const codes: string[] = [];
  const code = (error as { code?: unknown }).code;
  if (typeof code === "string") codes.push(code);
  const nested = (error as { errors?: unknown }).errors; // AggregateError (several addresses tried)
  if (Array.isArray(nested)) for (const e of nested) codes.push(...errorCodes(e, depth + 1));
  const cause = (error as { cause?: unknown }).cause;
  if (cause !== undefined) codes.push(...errorCodes(cause, depth + 1));
  return codes;
}

function isTimeout(error: unknown): boolean {
  return typeof error === "object" && error !== null && (error as { name?: unknown }).name === "TimeoutError";
}

/**
 * The path and query of `url` exactly as written. fetch parses URLs the WHATWG
 * way, which removes dot segments even when percent-encoded: the keys `.` and
 * `..` (`/v1/kv/%2E%2E`) would silently become requests for `/v1/`. Such
 * requests are sent with node:http, which sends the path as it is.
 */
function rawTarget(url: string): string | undefined {
  const match = /^https?:\/\/[^/?#]*(\/[^#]*)?$/i.exec(url);
  return match?.[1] ?? "/";
}

function timeoutError(): Error {
  const error = new Error("deadline passed");
  error.name = "TimeoutError";
  return error;
}

function nodeRequest(req: HttpRequest, target: string): Promise<HttpResponse> {
  const url = new URL(req.url);
  const lib = url.protocol === "https:" ? https : http;
  return new Promise<HttpResponse>((resolve, reject) => {
    const headers: Record<string, string> = { ...req.headers };
    if (req.body !== undefined) headers["content-length"] = String(req.body.byteLength);
    const request = lib.request({
      host: url.hostname.replace(/^\[|\]$/g, ""),
      port: url.port || undefined,
      method: req.method,
      path: target,
      headers,
    });
    const timer = setTimeout(() => request.destroy(timeoutError()), req.timeoutMs);
    request.on("error", (error) => {
      clearTimeout(timer);
      reject(error);
    });
    request.on("response", (response) => {
      const chunks: Buffer[] = [];
      response.on("data", (chunk: Buffer) => chunks.push(chunk));
      response.on("error", (error) => {
        clearTimeout(timer);
        reject(error);
      });
      response.on("end", () => {
        clearTimeout(timer);
        const out = new Headers();
        for (const [name, value] of Object.entries(response.headers)) {
          if (value === undefined) continue;
          for (const v of Array.isArray(value) ? value : [value]) out.append(name, v);
        }
        resolve({ status: response.statusCode ?? 0, headers: out, body: new Uint8Array(Buffer.concat(chunks)) });
      });
    });
    request.end(req.body === undefined ? undefined : Buffer.from(req.body.buffer, req.body.byteOffset, req.body.byteLength));
  });
}

export class HttpTransport {
  constructor(
    private readonly fetchImpl: FetchLike,
    private readonly extraInit: Record<string, unknown> = {},
  ) {}

  async request(req: HttpRequest): Promise<HttpResponse> {
    const signal = AbortSignal.timeout(req.timeoutMs);
    const what = `${req.method} ${req.url}`;
    try {
      const target = rawTarget(req.url);
      if (target !== undefined && new URL(req.url).pathname + new URL(req.url).search !== target) {
        return await nodeRequest(req, target);
      }
      const response = await this.fetchImpl(req.url, {
        ...this.extraInit,
        method: req.method,
        headers: req.headers,
        body: req.body,
        redirect: "manual",
        signal,
      } as RequestInit);
      // Still under the same deadline: a node that sends headers and then stalls times out too.
      const body = new Uint8Array(await response.arrayBuffer());
      return { status: response.status, headers: response.headers, body };
    } catch (error) {
      if (isTimeout(error) || signal.aborted) {
        throw new TimeoutError(`${what}: no complete answer within ${req.timeoutMs} ms`, { cause: error });
      }
      const codes = errorCodes(error);
      const connectFailed = codes.length > 0 && codes.every((c) => CONNECT_FAILED.has(c));
      const detail = codes.length ? codes.join(", ") : String((error as Error)?.message ?? error);
      throw new ConnectionError(
        `${what}: ${connectFailed ? "cannot connect" : "connection failed"} (${detail})`,
        { cause: error, connectFailed },
      );
    }
  }
}
