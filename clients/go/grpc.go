package dhashmap

import (
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"iter"
	"net"
	"sort"
	"strconv"
	"strings"
	"time"

	pb "github.com/dhashmap/dhashmap/clients/go/dhashmappb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// MaxBatch is the most keys or items one gRPC BatchGet or BatchPut call carries;
// GRPCClient splits longer batches into calls of this size.
const MaxBatch = 1000

// maxListLimit is the largest page List accepts, as the REST API's limit.
const maxListLimit = 10000

// GRPCClient talks to one node's gRPC API (docs/grpc.md: services dhashmap.v1.KV
// and dhashmap.v1.Cluster) over one HTTP/2 connection, which grpc-go reconnects
// when it breaks. It is safe for concurrent use.
type GRPCClient struct {
	addr    string
	conn    *grpc.ClientConn
	kv      pb.KVClient
	cluster pb.ClusterClient
	timeout time.Duration

	routing *grpcRouting // nil without smart routing
	// notMine (set by smart routing) hears of an answer whose trailing metadata
	// dhashmap-owners says the node does not own the key.
	notMine func()
}

// NewGRPCClient connects to the node's gRPC port at addr (host:port, 9090 by
// default) and waits, within ctx and the client's timeout, until the connection is
// ready: an address where nothing listens fails here with ErrConnection (or a
// context error). The connection is plaintext unless WithGRPCDialOptions supplies
// transport credentials; WithDialer, WithTimeout and WithMaxFrame (the largest
// message accepted) apply.
//
// With WithSmartRouting the client also loads the partition table and the members
// (over gRPC, from this node) and sends each key's Get, Put, Delete and
// CompareAndSwap straight to the gRPC port of the key's first live owner, like the
// native client (see "Smart routing" in the README).
func NewGRPCClient(ctx context.Context, addr string, opts ...Option) (*GRPCClient, error) {
	cfg := newConfig(opts)
	c, err := dialGRPC(addr, cfg)
	if err != nil {
		return nil, err
	}
	if err := c.waitReady(ctx); err != nil {
		c.conn.Close()
		return nil, err
	}
	if cfg.smart {
		c.routing = newGRPCRouting(c, cfg)
		if err := c.routing.router.refresh(ctx); err != nil {
			c.Close()
			return nil, err
		}
		go c.routing.router.run()
	}
	return c, nil
}

// dialGRPC makes a client for one node without waiting for the connection.
func dialGRPC(addr string, cfg config) (*GRPCClient, error) {
	dial := cfg.dial
	dialOpts := []grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, target string) (net.Conn, error) {
			return dial(ctx, "tcp", target)
		}),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(cfg.maxFrame), grpc.MaxCallSendMsgSize(cfg.maxFrame)),
		grpc.WithUserAgent(cfg.softwareVersion),
	}
	dialOpts = append(dialOpts, cfg.grpcDialOptions...)
	// passthrough: addr is dialed as it is (the dialer resolves it), not through DNS SRV.
	conn, err := grpc.NewClient("passthrough:///"+addr, dialOpts...)
	if err != nil {
		return nil, &Error{Kind: ErrInvalidRequest, Code: "invalid_request", Node: addr, Message: err.Error()}
	}
	return &GRPCClient{addr: addr, conn: conn, kv: pb.NewKVClient(conn), cluster: pb.NewClusterClient(conn),
		timeout: cfg.timeout}, nil
}

func (c *GRPCClient) waitReady(ctx context.Context) error {
	ctx, cancel := c.callContext(ctx)
	defer cancel()
	c.conn.Connect()
	for {
		state := c.conn.GetState()
		if state == connectivity.Ready {
			return nil
		}
		if state == connectivity.TransientFailure || state == connectivity.Shutdown {
			return &Error{Kind: ErrConnection, Code: "connection_error", Node: c.addr,
				Message: "cannot connect to the node's gRPC port"}
		}
		if !c.conn.WaitForStateChange(ctx, state) {
			e := contextError(ctx, "connecting")
			e.Node = c.addr
			return e
		}
	}
}

// Addr is the node's gRPC address.
func (c *GRPCClient) Addr() string { return c.addr }

// Close closes the connection; calls after it fail with ErrClosed.
func (c *GRPCClient) Close() error {
	if c.routing != nil {
		c.routing.close()
	}
	c.conn.Close()
	return nil
}

func (c *GRPCClient) callContext(ctx context.Context) (context.Context, context.CancelFunc) {
	if c.timeout > 0 {
		return context.WithTimeout(ctx, c.timeout)
	}
	return context.WithCancel(ctx)
}

// call runs one unary RPC with the client's timeout, mapping its status.
func grpcCall[Req, Resp any](c *GRPCClient, ctx context.Context, what string, f func(context.Context, Req, ...grpc.CallOption) (Resp, error), req Req) (Resp, error) {
	ctx, cancel := c.callContext(ctx)
	defer cancel()
	var trailer metadata.MD
	resp, err := f(ctx, req, grpc.Trailer(&trailer))
	if c.notMine != nil && len(trailer.Get(ownersMetadata)) > 0 {
		c.notMine()
	}
	if err != nil {
		return resp, c.statusError(ctx, err, trailer, what)
	}
	return resp, nil
}

// ownersMetadata is the trailing metadata of a node that does not own the key it answered for.
const ownersMetadata = "dhashmap-owners"

func quorumOf(set bool, q Consistency) *pb.Quorum {
	if !set {
		return nil
	}
	if q.count > 0 {
		return &pb.Quorum{Count: uint32(q.count)}
	}
	switch q.level {
	case pb.Consistency_LEVEL_ONE:
		return &pb.Quorum{Level: pb.Quorum_LEVEL_ONE}
	case pb.Consistency_LEVEL_QUORUM:
		return &pb.Quorum{Level: pb.Quorum_LEVEL_QUORUM}
	case pb.Consistency_LEVEL_ALL:
		return &pb.Quorum{Level: pb.Quorum_LEVEL_ALL}
	}
	return nil
}

func ttlSeconds(cc callConfig) uint64 {
	if cc.set&optTTL == 0 {
		return 0
	}
	return uint64(cc.ttl / time.Second)
}

// noWildcard: the gRPC API has no "any live value" condition.
func noWildcard(cc callConfig, op string) error {
	if cc.set&optIfMatch != 0 && cc.ifMatch == "*" {
		return newError(ErrInvalidRequest, "invalid_request", op+`: WithIfMatch("*") is not available over gRPC; give a version`)
	}
	return nil
}

// Get returns the live value of key and its version; ErrNotFound if there is none.
func (c *GRPCClient) Get(ctx context.Context, key []byte, opts ...CallOption) (Value, error) {
	cc, err := callOptions("Get", optR, opts)
	if err != nil {
		return Value{}, err
	}
	req := &pb.GetRequest{Key: key, R: quorumOf(cc.set&optR != 0, cc.r)}
	var resp *pb.GetResponse
	err = c.onKey(key, true, func(n *GRPCClient) (err error) {
		resp, err = grpcCall(n, ctx, "Get", n.kv.Get, req)
		return err
	})
	if err != nil {
		return Value{}, err
	}
	value := resp.GetValue()
	if value == nil {
		value = []byte{}
	}
	return Value{Value: value, Version: resp.GetVersion()}, nil
}

// Put stores value under key and returns the new version token. With WithIfMatch
// or WithIfNoneMatch it is a CompareAndSwap call.
func (c *GRPCClient) Put(ctx context.Context, key, value []byte, opts ...CallOption) (string, error) {
	cc, err := callOptions("Put", optTTL|optW|optIfMatch|optIfNoneMatch, opts)
	if err != nil {
		return "", err
	}
	if err := noWildcard(cc, "Put"); err != nil {
		return "", err
	}
	if cc.ifNoneMatch && cc.set&optIfMatch != 0 {
		return "", newError(ErrInvalidRequest, "invalid_request", "Put: WithIfMatch and WithIfNoneMatch together")
	}
	if cc.ifNoneMatch || cc.set&optIfMatch != 0 {
		return c.cas(ctx, key, value, cc)
	}
	req := &pb.PutRequest{Key: key, Value: value, TtlSeconds: ttlSeconds(cc), W: quorumOf(cc.set&optW != 0, cc.w)}
	var resp *pb.PutResponse
	err = c.onKey(key, false, func(n *GRPCClient) (err error) {
		resp, err = grpcCall(n, ctx, "Put", n.kv.Put, req)
		return err
	})
	if err != nil {
		return "", err
	}
	return resp.GetVersion(), nil
}

func (c *GRPCClient) cas(ctx context.Context, key, value []byte, cc callConfig) (string, error) {
	req := &pb.CompareAndSwapRequest{Key: key, Value: value, TtlSeconds: ttlSeconds(cc),
		W: quorumOf(cc.set&optW != 0, cc.w), CreateOnly: cc.ifNoneMatch}
	if !cc.ifNoneMatch {
		req.ExpectedVersion = cc.ifMatch
	}
	var resp *pb.CompareAndSwapResponse
	err := c.onKey(key, false, func(n *GRPCClient) (err error) {
		resp, err = grpcCall(n, ctx, "CompareAndSwap", n.kv.CompareAndSwap, req)
		return err
	})
	if err != nil {
		return "", err
	}
	return resp.GetVersion(), nil
}

// Delete deletes key; deleting an absent key succeeds (deletes are idempotent).
// With WithIfMatch the delete happens only at that version, else ErrPreconditionFailed.
func (c *GRPCClient) Delete(ctx context.Context, key []byte, opts ...CallOption) error {
	cc, err := callOptions("Delete", optW|optIfMatch, opts)
	if err != nil {
		return err
	}
	if err := noWildcard(cc, "Delete"); err != nil {
		return err
	}
	req := &pb.DeleteRequest{Key: key, IfMatch: cc.ifMatch, W: quorumOf(cc.set&optW != 0, cc.w)}
	return c.onKey(key, cc.ifMatch == "", func(n *GRPCClient) error {
		_, err := grpcCall(n, ctx, "Delete", n.kv.Delete, req)
		return err
	})
}

// CompareAndSwap writes value only if key's current version is *expectedVersion,
// or, when expectedVersion is nil, only if key has no live value (create only).
// It returns the new version; ErrPreconditionFailed when someone else got there first.
func (c *GRPCClient) CompareAndSwap(ctx context.Context, key []byte, expectedVersion *string, value []byte, opts ...CallOption) (string, error) {
	cc, err := casOptions(expectedVersion, opts)
	if err != nil {
		return "", err
	}
	if err := noWildcard(cc, "CompareAndSwap"); err != nil {
		return "", err
	}
	return c.cas(ctx, key, value, cc)
}

// BatchGet reads keys with BatchGet calls of up to MaxBatch keys and returns one
// result per key, in order. A key without a live value has Err matching
// ErrNotFound. The error is non-nil when a call failed: every key of that call has
// the call's error, and the error wraps the first.
func (c *GRPCClient) BatchGet(ctx context.Context, keys [][]byte, opts ...CallOption) ([]GetResult, error) {
	cc, err := callOptions("BatchGet", optR, opts)
	if err != nil {
		return nil, err
	}
	results := make([]GetResult, len(keys))
	for start := 0; start < len(keys); start += MaxBatch {
		chunk := keys[start:min(start+MaxBatch, len(keys))]
		resp, err := grpcCall(c, ctx, "BatchGet", c.kv.BatchGet, &pb.BatchGetRequest{Keys: chunk, R: quorumOf(cc.set&optR != 0, cc.r)})
		if err == nil && len(resp.GetItems()) != len(chunk) {
			err = &Error{Kind: ErrBadResponse, Code: "bad_response", Node: c.addr,
				Message: fmt.Sprintf("BatchGet: %d items for %d keys", len(resp.GetItems()), len(chunk))}
		}
		for i, k := range chunk {
			r := GetResult{Key: k, Err: err}
			if err == nil {
				item := resp.GetItems()[i]
				if item.GetFound() {
					value := item.GetValue()
					if value == nil {
						value = []byte{}
					}
					r.Value = Value{Value: value, Version: item.GetVersion()}
				} else {
					r.Err = &Error{Kind: ErrNotFound, Code: "not_found", Message: "no value for this key", Node: c.addr}
				}
			}
			results[start+i] = r
		}
	}
	return results, batchGetError(results)
}

// BatchPut writes items with BatchPut calls of up to MaxBatch items and returns
// one result per item, in order. The error is non-nil when some item failed; it
// wraps the first failure.
func (c *GRPCClient) BatchPut(ctx context.Context, items []Item, opts ...CallOption) ([]PutResult, error) {
	cc, err := callOptions("BatchPut", optTTL|optW, opts)
	if err != nil {
		return nil, err
	}
	results := make([]PutResult, len(items))
	ttl := ttlSeconds(cc)
	for start := 0; start < len(items); start += MaxBatch {
		chunk := items[start:min(start+MaxBatch, len(items))]
		req := &pb.BatchPutRequest{W: quorumOf(cc.set&optW != 0, cc.w), Items: make([]*pb.BatchPutRequest_Item, len(chunk))}
		for i, it := range chunk {
			req.Items[i] = &pb.BatchPutRequest_Item{Key: it.Key, Value: it.Value, TtlSeconds: ttl}
		}
		resp, err := grpcCall(c, ctx, "BatchPut", c.kv.BatchPut, req)
		if err == nil && len(resp.GetResults()) != len(chunk) {
			err = &Error{Kind: ErrBadResponse, Code: "bad_response", Node: c.addr,
				Message: fmt.Sprintf("BatchPut: %d results for %d items", len(resp.GetResults()), len(chunk))}
		}
		for i, it := range chunk {
			r := PutResult{Key: it.Key, Err: err}
			if err == nil {
				res := resp.GetResults()[i]
				if code := codes.Code(res.GetCode()); code != codes.OK {
					r.Err = errorOfGRPCStatus(code, res.GetMessage(), nil, c.addr)
				} else {
					r.Version = res.GetVersion()
				}
			}
			results[start+i] = r
		}
	}
	return results, batchPutError(results)
}

// List returns one page of live keys starting with prefix, in byte order, after
// cursor ("" for the first page); limit is 1 to 10,000 (0: 1,000). Cursors are the
// REST API's: a cursor from one API continues the listing on the other.
func (c *GRPCClient) List(ctx context.Context, prefix []byte, cursor string, limit int) (Page, error) {
	if limit < 0 || limit > maxListLimit {
		return Page{}, newError(ErrInvalidRequest, "invalid_request", fmt.Sprintf("limit must be 1 to %d, not %d", maxListLimit, limit))
	}
	if limit == 0 {
		limit = DefaultPageSize
	}
	req := &pb.ScanRequest{Prefix: prefix, PageSize: uint32(min(limit, DefaultPageSize)), Limit: uint32(limit)}
	if cursor != "" {
		after, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(cursor, "="))
		if err != nil {
			return Page{}, newError(ErrInvalidRequest, "invalid_request", "cursor is not one a node handed out")
		}
		req.StartAfter, req.HasStartAfter = after, true
	}
	page := Page{Keys: [][]byte{}}
	for key, err := range c.scan(ctx, req) {
		if err != nil {
			return Page{}, err
		}
		page.Keys = append(page.Keys, key)
	}
	if len(page.Keys) >= limit {
		page.Cursor = base64.RawURLEncoding.EncodeToString(page.Keys[len(page.Keys)-1])
	}
	return page, nil
}

// Scan iterates over every live key starting with prefix, in byte order, over one
// Scan server stream (WithPageSize keys per message, at most 1,000). It is not a
// snapshot. Stop at the first non-nil error; breaking out of the loop ends the stream.
func (c *GRPCClient) Scan(ctx context.Context, prefix []byte, opts ...CallOption) iter.Seq2[[]byte, error] {
	cc, err := callOptions("Scan", optPageSize, opts)
	if err == nil && cc.set&optPageSize != 0 && (cc.pageSize < 1 || cc.pageSize > maxListLimit) {
		err = newError(ErrInvalidRequest, "invalid_request", fmt.Sprintf("page size must be 1 to %d, not %d", maxListLimit, cc.pageSize))
	}
	if err != nil {
		return func(yield func([]byte, error) bool) { yield(nil, err) }
	}
	req := &pb.ScanRequest{Prefix: prefix}
	if cc.set&optPageSize != 0 {
		req.PageSize = uint32(cc.pageSize)
	}
	return c.scan(ctx, req)
}

// scan runs one Scan stream. The client's timeout bounds the wait for each message,
// not the whole stream, which may be long.
func (c *GRPCClient) scan(ctx context.Context, req *pb.ScanRequest) iter.Seq2[[]byte, error] {
	return func(yield func([]byte, error) bool) {
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		var timer *time.Timer
		var timedOut = make(chan struct{})
		arm := func() {
			if c.timeout > 0 {
				timer = time.AfterFunc(c.timeout, func() { close(timedOut); cancel() })
			}
		}
		stopped := true // false once disarm finds the timer already fired
		disarm := func() bool {
			if timer != nil {
				stopped = timer.Stop()
			}
			return stopped
		}
		fail := func(err error) {
			if !stopped {
				// The timer fired: its function (in a goroutine of its own) is closing timedOut.
				// Wait for it, or a timeout would end the listing as if it were complete.
				<-timedOut
			}
			select {
			case <-timedOut:
				yield(nil, &Error{Kind: context.DeadlineExceeded, Code: "timeout", Node: c.addr,
					Message: "Scan: no answer in time: " + context.DeadlineExceeded.Error()})
			default:
				yield(nil, err)
			}
		}
		var trailer metadata.MD
		arm()
		stream, err := c.kv.Scan(ctx, req, grpc.Trailer(&trailer))
		if err != nil {
			disarm()
			fail(c.statusError(ctx, err, trailer, "Scan"))
			return
		}
		for {
			resp, err := stream.Recv()
			if err == io.EOF {
				disarm()
				return
			}
			if !disarm() {
				fail(nil)
				return
			}
			if err != nil {
				fail(c.statusError(ctx, err, stream.Trailer(), "Scan"))
				return
			}
			for _, k := range resp.GetKeys() {
				if !yield(k, nil) {
					return
				}
			}
			arm()
		}
	}
}

// Members returns the cluster's members as this node sees them.
func (c *GRPCClient) Members(ctx context.Context) ([]Member, error) {
	resp, err := grpcCall(c, ctx, "Members", c.cluster.Members, &pb.MembersRequest{})
	if err != nil {
		return nil, err
	}
	members := make([]Member, len(resp.GetMembers()))
	for i, m := range resp.GetMembers() {
		members[i] = Member{ID: m.GetId(), State: m.GetState(), Host: m.GetHost(), PeerPort: int(m.GetPeerPort()),
			RESTPort: int(m.GetRestPort()), GRPCPort: int(m.GetGrpcPort()), Weight: int(m.GetWeight()),
			Version: m.GetVersion(), Incarnation: int(m.GetIncarnation())}
	}
	return members, nil
}

// Ring returns the cluster's partition table. Nodes is the sorted set of the owners.
func (c *GRPCClient) Ring(ctx context.Context) (*Ring, error) {
	resp, err := grpcCall(c, ctx, "Ring", c.cluster.Ring, &pb.RingRequest{})
	if err != nil {
		return nil, err
	}
	bad := func(why string) error {
		return &Error{Kind: ErrBadResponse, Code: "bad_response", Node: c.addr, Message: "Ring: " + why}
	}
	partitions := int(resp.GetPartitions())
	if partitions <= 0 {
		return nil, bad("no partition count")
	}
	if resp.GetHash() != "" && resp.GetHash() != "xxh64" {
		return nil, bad(fmt.Sprintf("hash %q is not the xxh64 this client computes", resp.GetHash()))
	}
	ring := &Ring{Partitions: partitions, Replicas: int(resp.GetReplicas()), Hash: resp.GetHash(),
		Owners: make([][]string, partitions)}
	nodes := map[string]bool{}
	for _, row := range resp.GetTable() {
		p := int(row.GetPartition())
		if p >= partitions {
			return nil, bad(fmt.Sprintf("partition %d out of range", p))
		}
		ring.Owners[p] = row.GetOwners()
		for _, o := range row.GetOwners() {
			nodes[o] = true
		}
	}
	for n := range nodes {
		ring.Nodes = append(ring.Nodes, n)
	}
	sort.Strings(ring.Nodes)
	return ring, nil
}

// statusError turns a failed call's error into ours.
func (c *GRPCClient) statusError(ctx context.Context, err error, trailer metadata.MD, what string) error {
	st, ok := status.FromError(err)
	if !ok {
		if ctx.Err() != nil {
			e := contextError(ctx, what+": no answer in time")
			e.Node = c.addr
			return e
		}
		return &Error{Kind: ErrConnection, Code: "connection_error", Node: c.addr, Message: what + ": " + err.Error()}
	}
	if (st.Code() == codes.DeadlineExceeded || st.Code() == codes.Canceled) && ctx.Err() != nil {
		e := contextError(ctx, what+": no answer in time")
		e.Node = c.addr
		return e
	}
	if st.Code() == codes.Canceled && strings.Contains(st.Message(), "client connection is closing") {
		return &Error{Kind: ErrClosed, Code: "closed", Node: c.addr, Message: what + ": the client was closed"}
	}
	return errorOfGRPCStatus(st.Code(), st.Message(), trailer, c.addr)
}

// errorOfGRPCStatus maps a status code (docs/grpc.md) to the error kinds the other
// transports return.
func errorOfGRPCStatus(code codes.Code, msg string, trailer metadata.MD, node string) error {
	e := &Error{Message: msg, Node: node}
	switch code {
	case codes.NotFound:
		e.Kind, e.Code = ErrNotFound, "not_found"
	case codes.FailedPrecondition, codes.Aborted:
		e.Kind, e.Code = ErrPreconditionFailed, "precondition_failed"
	case codes.InvalidArgument, codes.OutOfRange:
		e.Kind, e.Code = ErrInvalidRequest, "invalid_request"
	case codes.ResourceExhausted:
		lower := strings.ToLower(msg)
		switch {
		case strings.Contains(lower, "message larger than max"):
			// grpc's own limit, either side ("grpc: received message larger than max",
			// "trying to send message larger than max", "Received message larger than max")
			e.Kind, e.Code = ErrTooLarge, "frame_too_large"
		case strings.HasPrefix(lower, "the key is "):
			e.Kind, e.Code = ErrTooLarge, "key_too_long"
		case strings.HasPrefix(lower, "the value is "):
			e.Kind, e.Code = ErrTooLarge, "value_too_large"
		default:
			e.Kind, e.Code = ErrStorageFull, "storage_full"
		}
	case codes.Unavailable:
		acks, errA := strconv.Atoi(firstMD(trailer, "acks"))
		required, errR := strconv.Atoi(firstMD(trailer, "required"))
		switch {
		case errA == nil && errR == nil && acks >= 0 && required > 0:
			e.Kind, e.Code = ErrUnavailable, "unavailable"
			e.Acks, e.Required = acks, required
		case isTransportMessage(msg):
			e.Kind, e.Code = ErrConnection, "connection_error"
		default:
			e.Kind, e.Code = ErrUnavailable, "unavailable"
		}
	case codes.PermissionDenied:
		e.Kind, e.Code = ErrForbidden, "forbidden"
	case codes.DeadlineExceeded:
		e.Kind, e.Code = context.DeadlineExceeded, "timeout"
	case codes.Canceled:
		e.Kind, e.Code = context.Canceled, "canceled"
	case codes.Internal, codes.Unknown:
		e.Kind, e.Code = ErrServer, "internal"
	default:
		e.Kind, e.Code = ErrServer, strings.ToLower(code.String())
	}
	if e.Message == "" {
		e.Message = code.String()
	}
	return e
}

func firstMD(md metadata.MD, key string) string {
	if v := md.Get(key); len(v) > 0 {
		return v[0]
	}
	return ""
}

// isTransportMessage: an UNAVAILABLE that grpc-go made up because the connection
// failed, rather than one the node sent.
func isTransportMessage(msg string) bool {
	for _, s := range []string{"connection error", "transport", "error reading from server", "while dialing", "last connection error", "connection closed"} {
		if strings.Contains(msg, s) {
			return true
		}
	}
	return false
}
