package dhashmap

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"

	pb "github.com/dhashmap/dhashmap/clients/go/dhashmappb"
)

// The kinds of failure, for errors.Is. Every error an operation returns is one of
// these (wrapped in an *Error that says more), a *HandshakeError, or a context
// error: context.DeadlineExceeded when the node did not answer in time (the
// client's timeout or the ctx deadline, whichever came first) and
// context.Canceled when ctx was canceled. They mean what the Python client's
// exceptions of the same names mean, whichever transport is used.
var (
	// ErrNotFound: the key has no live value (never written, deleted or expired).
	ErrNotFound = errors.New("not found")
	// ErrPreconditionFailed: the expected version (If-Match / create-only) did not
	// hold: someone else wrote first. Nothing was written; read again and retry.
	ErrPreconditionFailed = errors.New("precondition failed")
	// ErrInvalidRequest: the request is malformed (empty key, ttl out of range,
	// a replica count the key cannot satisfy...). Retrying cannot help.
	ErrInvalidRequest = errors.New("invalid request")
	// ErrTooLarge: the key (Code "key_too_long") or the value ("value_too_large",
	// "frame_too_large") is over the node's limit.
	ErrTooLarge = errors.New("too large")
	// ErrUnavailable: the node cannot serve the request now (too few replicas
	// answered, its storage failed, too many requests in flight); retry later.
	// When replicas were counted, Error.Required > 0 and Error.Acks says how
	// many answered.
	ErrUnavailable = errors.New("unavailable")
	// ErrStorageFull: the node's disk or LMDB map is full (REST 507).
	ErrStorageFull = errors.New("storage full")
	// ErrForbidden: the node does not serve this operation to a client.
	ErrForbidden = errors.New("forbidden")
	// ErrServer: the node failed (a bug; see its log), or something between
	// the client and the node answered with an unexpected error.
	ErrServer = errors.New("server error")
	// ErrConnection: no answer arrived because the connection could not be
	// made or broke. A write that fails so may or may not have been applied.
	ErrConnection = errors.New("connection error")
	// ErrBadResponse: the node's answer does not make sense to this client.
	ErrBadResponse = errors.New("bad response")
	// ErrClosed: the client has been closed.
	ErrClosed = errors.New("client closed")
)

// Error is a failure reported by a node or met on the way to it.
//
// Match its kind with errors.Is (ErrNotFound, ErrUnavailable, ...). Code is the
// server's stable machine-readable code ("not_found", "key_too_long", "busy",
// "storage_error", ...) and Message its explanation for people: match on the
// kind or Code, never on Message.
type Error struct {
	Kind    error  // one of the Err* values above, or a context error
	Code    string // stable code, as the Python client's .code
	Message string // human-readable
	Status  int    // the HTTP status; 0 for the native protocol or no response
	// Acks and Required: for ErrUnavailable because too few replicas answered,
	// how many did and how many had to. Required is 0 when the node did not say.
	Acks, Required int
	// Node is where the request went (host:port of the native port, or the REST URL).
	Node string
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString("dhashmap: ")
	if e.Node != "" {
		b.WriteString(e.Node)
		b.WriteString(": ")
	}
	b.WriteString(e.Message)
	b.WriteString(" (")
	if e.Status != 0 {
		fmt.Fprintf(&b, "HTTP %d, ", e.Status)
	}
	b.WriteString(e.Code)
	if e.Required > 0 {
		fmt.Fprintf(&b, ", %d of %d replicas", e.Acks, e.Required)
	}
	b.WriteString(")")
	return b.String()
}

// Unwrap makes errors.Is(err, ErrNotFound) and the like work.
func (e *Error) Unwrap() error { return e.Kind }

// HandshakeError: the node will not talk to this client: it belongs to another
// cluster (Code "cluster_mismatch"), speaks another protocol version
// ("version_mismatch"), or refused the client's Hello. Retrying cannot help; the
// cluster name (WithCluster) or the address is wrong.
type HandshakeError struct {
	Code    string
	Message string
	Node    string // the address dialed
}

func (e *HandshakeError) Error() string {
	return fmt.Sprintf("dhashmap: handshake with %s: %s (%s)", e.Node, e.Message, e.Code)
}

func newError(kind error, code, message string) *Error {
	return &Error{Kind: kind, Code: code, Message: message}
}

// errorOfStatus: the kind of an HTTP error status, as the Python client's _BY_STATUS.
func errorOfStatus(status int) error {
	switch status {
	case 400:
		return ErrInvalidRequest
	case 403:
		return ErrForbidden
	case 404:
		return ErrNotFound
	case 412:
		return ErrPreconditionFailed
	case 413, 414:
		return ErrTooLarge
	case 503:
		return ErrUnavailable
	case 507:
		return ErrStorageFull
	}
	if status >= 500 {
		return ErrServer
	}
	return ErrServer
}

var defaultCodeOfStatus = map[int]string{
	400: "invalid_request", 403: "forbidden", 404: "not_found", 412: "precondition_failed",
	413: "value_too_large", 414: "key_too_long", 503: "unavailable", 507: "storage_full",
}

// errorFromResponse is the typed error for an HTTP error response. The kind
// follows the status; code and message come from the JSON body when there is
// one, so that a proxy's HTML 502 still yields a useful error.
func errorFromResponse(status int, body []byte) *Error {
	var doc struct {
		Error struct {
			Code     *string `json:"code"`
			Message  *string `json:"message"`
			Acks     *int    `json:"acks"`
			Required *int    `json:"required"`
		} `json:"error"`
	}
	e := &Error{Kind: errorOfStatus(status), Status: status}
	if json.Unmarshal(body, &doc) == nil {
		if doc.Error.Code != nil {
			e.Code = *doc.Error.Code
		}
		if doc.Error.Message != nil {
			e.Message = *doc.Error.Message
		}
		if status == 404 && e.Code != "" && e.Code != "not_found" {
			// A 404 that is not about the key (no_route: a wrong base URL or proxy route) must not
			// read as "no such key".
			e.Kind = ErrServer
		}
		if e.Kind == ErrUnavailable && doc.Error.Acks != nil && doc.Error.Required != nil &&
			*doc.Error.Acks >= 0 && *doc.Error.Required > 0 {
			e.Acks, e.Required = *doc.Error.Acks, *doc.Error.Required
		}
	}
	if e.Code == "" {
		e.Code = defaultCodeOfStatus[status]
		if e.Code == "" {
			e.Code = "error"
			if status >= 500 {
				e.Code = "internal"
			}
		}
	}
	if e.Message == "" {
		text := body
		if len(text) > 200 {
			text = text[:200]
		}
		e.Message = strings.TrimSpace(strings.ToValidUTF8(string(text), string(utf8.RuneError)))
		if e.Message == "" {
			e.Message = fmt.Sprintf("HTTP %d", status)
		}
	}
	return e
}

var handshakeCodes = map[pb.ErrorCode]string{
	pb.ErrorCode_ERROR_CODE_VERSION_MISMATCH:    "version_mismatch",
	pb.ErrorCode_ERROR_CODE_CLUSTER_MISMATCH:    "cluster_mismatch",
	pb.ErrorCode_ERROR_CODE_PARTITIONS_MISMATCH: "partitions_mismatch",
}

func codeName(code pb.ErrorCode) string {
	if name, ok := pb.ErrorCode_name[int32(code)]; ok {
		return strings.ToLower(strings.TrimPrefix(name, "ERROR_CODE_"))
	}
	return fmt.Sprintf("error_code_%d", int32(code))
}

// requestError maps an Error frame that answers a request, as the Python
// client's _native.request_error: the same kinds the REST client returns.
func requestError(perr *pb.Error) error {
	msg := perr.GetMessage()
	if msg == "" {
		msg = pb.ErrorCode_name[int32(perr.GetCode())]
	}
	switch code := perr.GetCode(); code {
	case pb.ErrorCode_ERROR_CODE_NOT_FOUND:
		return newError(ErrNotFound, "not_found", msg)
	case pb.ErrorCode_ERROR_CODE_PRECONDITION_FAILED:
		return newError(ErrPreconditionFailed, "precondition_failed", msg)
	case pb.ErrorCode_ERROR_CODE_INVALID_REQUEST:
		return newError(ErrInvalidRequest, "invalid_request", msg)
	case pb.ErrorCode_ERROR_CODE_UNAVAILABLE:
		e := newError(ErrUnavailable, "unavailable", msg)
		if perr.GetRequired() > 0 {
			e.Acks, e.Required = int(perr.GetAcks()), int(perr.GetRequired())
		}
		return e
	case pb.ErrorCode_ERROR_CODE_BUSY:
		return newError(ErrUnavailable, "busy", msg)
	case pb.ErrorCode_ERROR_CODE_STORAGE:
		return newError(ErrUnavailable, "storage_error", msg)
	case pb.ErrorCode_ERROR_CODE_FORBIDDEN:
		return newError(ErrForbidden, "forbidden", msg)
	case pb.ErrorCode_ERROR_CODE_TIMEOUT:
		return newError(context.DeadlineExceeded, "timeout", msg)
	case pb.ErrorCode_ERROR_CODE_TOO_LARGE:
		// The code does not say which; the node's messages name the key when it is the key.
		if strings.Contains(strings.ToLower(msg), "key") {
			return newError(ErrTooLarge, "key_too_long", msg)
		}
		return newError(ErrTooLarge, "value_too_large", msg)
	case pb.ErrorCode_ERROR_CODE_INTERNAL:
		return newError(ErrServer, "internal", msg)
	default:
		if name, ok := handshakeCodes[code]; ok {
			return &HandshakeError{Code: name, Message: msg}
		}
		return newError(ErrServer, codeName(code), msg)
	}
}

// connectionError maps an Error frame with id 0: the node is closing the
// connection, and says why.
func connectionError(perr *pb.Error) error {
	msg := perr.GetMessage()
	if msg == "" {
		msg = pb.ErrorCode_name[int32(perr.GetCode())]
	}
	msg = "the node closed the connection: " + msg
	code := perr.GetCode()
	if name, ok := handshakeCodes[code]; ok {
		return &HandshakeError{Code: name, Message: msg}
	}
	switch code {
	case pb.ErrorCode_ERROR_CODE_TOO_LARGE:
		// The length prefix was over the node's frame limit (max value + max key + 1 MiB).
		return newError(ErrTooLarge, "frame_too_large", msg)
	case pb.ErrorCode_ERROR_CODE_BAD_FRAME:
		return newError(ErrConnection, "bad_frame", msg)
	}
	return newError(ErrConnection, "connection_error", msg)
}

// withNode fills in where the request went, on the error types that have room for it.
func withNode(err error, node string) error {
	switch e := err.(type) {
	case *Error:
		if e.Node == "" {
			c := *e
			c.Node = node
			return &c
		}
	case *HandshakeError:
		if e.Node == "" {
			c := *e
			c.Node = node
			return &c
		}
	}
	return err
}

// contextError: the request's context ended before the answer came.
func contextError(ctx context.Context, what string) *Error {
	err := ctx.Err()
	if err == nil {
		err = context.DeadlineExceeded
	}
	code := "timeout"
	if errors.Is(err, context.Canceled) {
		code = "canceled"
	}
	return &Error{Kind: err, Code: code, Message: what + ": " + err.Error()}
}
