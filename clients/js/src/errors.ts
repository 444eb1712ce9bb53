/**
 * Typed errors. Every failure an operation can have is a `DhashmapError`: an
 * HTTP error answer becomes the subclass for its status (and code), a failure
 * without an answer becomes `ConnectionError` or `TimeoutError`. Callers never
 * see fetch's `TypeError("fetch failed")` or an `AbortSignal` DOMException;
 * the original is kept as `cause`. Match on the class or on `code`, never on
 * `message`: only the code is a stable API.
 */

export interface DhashmapErrorOptions {
  status?: number | undefined;
  code?: string | undefined;
  cause?: unknown;
}

export class DhashmapError extends Error {
  static readonly defaultCode: string = "error";
  /** The HTTP status, or `undefined` when no answer arrived. */
  readonly status: number | undefined;
  /** The server's stable error code, e.g. `"not_found"`, `"unavailable"`. */
  readonly code: string;

  constructor(message: string, options: DhashmapErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = new.target.name;
    this.status = options.status;
    this.code = options.code ?? (new.target as typeof DhashmapError).defaultCode;
  }
}

/** 403: the node refuses this operation to a client (e.g. a replica-internal operation). */
export class ForbiddenError extends DhashmapError {
  static override readonly defaultCode: string = "forbidden";
}

/** 404 `not_found`: the key has no live value (never written, deleted or expired). */
export class NotFoundError extends DhashmapError {
  static override readonly defaultCode: string = "not_found";
}

/** 412: an `ifMatch` / `ifNoneMatch` / compare-and-swap condition did not hold; nothing was written. */
export class PreconditionFailedError extends DhashmapError {
  static override readonly defaultCode: string = "precondition_failed";
}

/** 400: the node refused the request as malformed (bad ttl, limit, cursor, level...). */
export class InvalidRequestError extends DhashmapError {
  static override readonly defaultCode: string = "invalid_request";
}

/** 413 or 414: the key or the value is over the node's limit. */
export class TooLargeError extends DhashmapError {
  static override readonly defaultCode: string = "too_large";
}

/** 413: the value is over `--max-value-size` (8 MiB by default). */
export class ValueTooLargeError extends TooLargeError {
  static override readonly defaultCode: string = "value_too_large";
}

/** 414: the key is over `--max-key-size` (446 bytes by default). */
export class KeyTooLongError extends TooLargeError {
  static override readonly defaultCode: string = "key_too_long";
}

/**
 * 503: the node cannot serve now (`unavailable`: too few replicas answered;
 * `storage_error`). `acks` / `required` say how many replicas acknowledged and
 * how many had to, when the node said. A write that fails this way is not
 * rolled back: the replicas that acknowledged keep it.
 */
export class UnavailableError extends DhashmapError {
  static override readonly defaultCode: string = "unavailable";
  readonly acks: number | undefined;
  readonly required: number | undefined;

  constructor(message: string, options: DhashmapErrorOptions & { acks?: number | undefined; required?: number | undefined } = {}) {
    super(message, options);
    this.acks = options.acks;
    this.required = options.required;
  }
}

/** 507: the node's storage is full; writes fail until space is freed. */
export class StorageFullError extends DhashmapError {
  static override readonly defaultCode: string = "storage_full";
}

/** Any other 5xx: a server bug, or a proxy in between failed. */
export class ServerError extends DhashmapError {
  static override readonly defaultCode: string = "internal";
}

/** The node answered something this client cannot read (no ETag, a listing that is not JSON...). */
export class BadResponseError extends DhashmapError {
  static override readonly defaultCode: string = "bad_response";
}

/**
 * No HTTP answer arrived; `status` is `undefined`. A write that fails this way
 * may or may not have been applied: read the key (or use compare-and-swap)
 * before assuming either.
 */
export class TransportError extends DhashmapError {
  static override readonly defaultCode: string = "transport_error";
}

/**
 * The connection could not be made, or broke before the answer was complete.
 * `connectFailed` is true when no connection was made at all, so the request
 * provably never reached the node (refused, unknown host, unreachable).
 */
export class ConnectionError extends TransportError {
  static override readonly defaultCode: string = "connection_error";
  readonly connectFailed: boolean;

  constructor(message: string, options: DhashmapErrorOptions & { connectFailed?: boolean } = {}) {
    super(message, options);
    this.connectFailed = options.connectFailed ?? false;
  }
}

/** The node did not answer (status, headers and body) within the client's `timeoutMs`. */
export class TimeoutError extends TransportError {
  static override readonly defaultCode: string = "timeout";
}

function count(raw: unknown): number | undefined {
  return typeof raw === "number" && Number.isInteger(raw) && raw >= 0 ? raw : undefined;
}

/**
 * The typed error for an HTTP error answer. The class follows the status (and,
 * for 404, the code); `code` and `message` come from the JSON body
 * `{"error": {"code", "message"}}` when there is one, so an HTML 502 from a
 * proxy still gives a useful error rather than a JSON parse failure.
 */
export function errorFromResponse(status: number, body: Uint8Array, context = ""): DhashmapError {
  let code: string | undefined;
  let message: string | undefined;
  let error: Record<string, unknown> = {};
  try {
    const document: unknown = JSON.parse(new TextDecoder().decode(body));
    const inner = (document as { error?: unknown } | null)?.error;
    if (typeof inner === "object" && inner !== null) {
      error = inner as Record<string, unknown>;
      if (typeof error.code === "string") code = error.code;
      if (typeof error.message === "string") message = error.message;
    }
  } catch {
    // not JSON: fall back to the body's text below
  }
  if (message === undefined) {
    const text = new TextDecoder().decode(body.subarray(0, 200)).trim();
    message = text || `HTTP ${status}`;
  }
  const full = context ? `${context}: ${message}` : message;
  const options = { status, code };
  switch (status) {
    case 400: return new InvalidRequestError(full, options);
    case 403: return new ForbiddenError(full, options);
    case 404:
      // `no_route` means a wrong base URL, not a missing key: it must not be caught as one.
      return code === "not_found"
        ? new NotFoundError(full, options)
        : new DhashmapError(full, options);
    case 412: return new PreconditionFailedError(full, options);
    case 413: return new ValueTooLargeError(full, options);
    case 414: return new KeyTooLongError(full, options);
    case 503:
      return new UnavailableError(full, { ...options, acks: count(error.acks), required: count(error.required) });
    case 507: return new StorageFullError(full, options);
    default:
      return status >= 500 ? new ServerError(full, options) : new DhashmapError(full, options);
  }
}
