/**
 * dhashmap-client: a TypeScript client for dhashmap's REST API.
 *
 * Transport-independent parts (errors, byte handling, hashing, topology) live in
 * their own modules so that a gRPC client can share them later.
 */

export {
  Client,
  type BatchItem,
  type ClientOptions,
  type DeleteOptions,
  type GetOptions,
  type ListOptions,
  type PutOptions,
  type Value,
} from "./client.js";
export { type BytesLike, type Level, type Page, toBytes, toText } from "./codec.js";
export {
  BadResponseError,
  ConnectionError,
  DhashmapError,
  ForbiddenError,
  InvalidRequestError,
  KeyTooLongError,
  NotFoundError,
  PreconditionFailedError,
  ServerError,
  StorageFullError,
  TimeoutError,
  TooLargeError,
  TransportError,
  UnavailableError,
  ValueTooLargeError,
  errorFromResponse,
} from "./errors.js";
export type { FetchLike } from "./http.js";
export { type Member, type Members, type Ring, Topology } from "./routing.js";
export { partitionOf, xxh64 } from "./xxh64.js";
