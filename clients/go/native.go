package dhashmap

import (
	"context"
	"errors"
	"fmt"
	"iter"
	"net"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"

	pb "github.com/dhashmap/dhashmap/clients/go/dhashmappb"
)

// NativeClient speaks the native protocol (docs/protocol.md) to the nodes' peer
// ports: length-prefixed protobuf frames, pipelined with request ids over a small
// pool of connections per node. It is safe for concurrent use, and concurrent
// requests share connections: each waits only for its own answer.
//
// Without smart routing, requests go to the given addresses in turn (any node
// coordinates any key); a node that cannot be reached is skipped and retried
// after a backoff. With WithSmartRouting, each request goes to the first live
// node of its key's preference list.
//
// Scan, List, Members and Ring have no native message yet and use the REST API of
// a node: the one given by WithRESTURL, or the REST port a node announces in its
// Hello.
type NativeClient struct {
	cfg   config
	seeds []string
	http  *http.Client
	next  atomic.Uint64

	mu     sync.Mutex
	pools  map[string]*nodePool
	closed bool

	router *router // nil without smart routing
}

// NewNativeClient connects to the first reachable of addrs (host:port of native
// ports, 7000 by default) and checks its handshake, so that a wrong address or
// cluster name fails here. With WithSmartRouting it also loads the partition table
// and member list. ctx bounds this setup only.
func NewNativeClient(ctx context.Context, addrs []string, opts ...Option) (*NativeClient, error) {
	if len(addrs) == 0 {
		return nil, errors.New("dhashmap: NewNativeClient needs at least one node address")
	}
	for _, a := range addrs {
		if _, _, err := net.SplitHostPort(a); err != nil {
			return nil, fmt.Errorf("dhashmap: %q is not host:port: %v", a, err)
		}
	}
	c := &NativeClient{cfg: newConfig(opts), seeds: append([]string(nil), addrs...), pools: map[string]*nodePool{}}
	if c.cfg.cluster == "" {
		return nil, errors.New("dhashmap: the cluster name must not be empty")
	}
	c.http = httpClientOf(c.cfg)
	if _, err := c.anyConn(ctx); err != nil {
		c.Close()
		return nil, err
	}
	if c.cfg.smart {
		c.router = newRouter(routerSource{load: c.loadTopology, addr: nativeAddrOf, seeds: c.seeds,
			refresh: c.cfg.refresh, timeout: c.cfg.timeout})
		if err := c.router.refresh(ctx); err != nil {
			c.Close()
			return nil, err
		}
		go c.router.run()
	}
	return c, nil
}

// Close closes every connection; requests still waiting fail with ErrConnection
// and later calls with ErrClosed.
func (c *NativeClient) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	pools := c.pools
	c.mu.Unlock()
	if c.router != nil {
		c.router.stop()
	}
	for _, p := range pools {
		p.close()
	}
	c.http.CloseIdleConnections()
	return nil
}

// Get returns the live value of key and its version; ErrNotFound if there is none.
func (c *NativeClient) Get(ctx context.Context, key []byte, opts ...CallOption) (Value, error) {
	cc, err := callOptions("Get", optR, opts)
	if err != nil {
		return Value{}, err
	}
	return c.get(ctx, key, cc)
}

func (c *NativeClient) get(ctx context.Context, key []byte, cc callConfig) (Value, error) {
	req := &pb.Get{Key: key}
	if cc.set&optR != 0 {
		req.R = cc.r.proto()
	}
	answer, node, err := c.call(ctx, key, &pb.Frame{Body: &pb.Frame_Get{Get: req}})
	if err != nil {
		return Value{}, err
	}
	result, ok := answer.GetBody().(*pb.Frame_GetResult)
	if !ok {
		return Value{}, badAnswer("Get", answer, node)
	}
	if !result.GetResult.GetFound() {
		return Value{}, &Error{Kind: ErrNotFound, Code: "not_found", Message: "no value for this key", Node: node}
	}
	value := result.GetResult.GetValue()
	if value == nil {
		value = []byte{}
	}
	return Value{Value: value, Version: result.GetResult.GetVersion()}, nil
}

// Put stores value under key and returns the new version token.
func (c *NativeClient) Put(ctx context.Context, key, value []byte, opts ...CallOption) (string, error) {
	cc, err := callOptions("Put", optTTL|optW|optIfMatch|optIfNoneMatch, opts)
	if err != nil {
		return "", err
	}
	return c.put(ctx, key, value, cc)
}

func (c *NativeClient) put(ctx context.Context, key, value []byte, cc callConfig) (string, error) {
	req := &pb.Put{Key: key, Value: value, IfNoneMatch: cc.ifNoneMatch}
	if cc.set&optTTL != 0 {
		req.TtlSeconds = uint64(cc.ttl.Seconds())
	}
	if cc.set&optIfMatch != 0 {
		req.IfMatch = cc.ifMatch
	}
	if cc.set&optW != 0 {
		req.W = cc.w.proto()
	}
	answer, node, err := c.call(ctx, key, &pb.Frame{Body: &pb.Frame_Put{Put: req}})
	if err != nil {
		return "", err
	}
	result, ok := answer.GetBody().(*pb.Frame_PutResult)
	if !ok {
		return "", badAnswer("Put", answer, node)
	}
	if result.PutResult.GetVersion() == "" {
		return "", &Error{Kind: ErrBadResponse, Code: "bad_response", Message: "the node sent no version", Node: node}
	}
	return result.PutResult.GetVersion(), nil
}

// Delete deletes key; deleting an absent key succeeds (deletes are idempotent).
// With WithIfMatch the delete happens only at that version, else ErrPreconditionFailed.
func (c *NativeClient) Delete(ctx context.Context, key []byte, opts ...CallOption) error {
	cc, err := callOptions("Delete", optW|optIfMatch, opts)
	if err != nil {
		return err
	}
	req := &pb.Delete{Key: key}
	if cc.set&optIfMatch != 0 {
		req.IfMatch = cc.ifMatch
	}
	if cc.set&optW != 0 {
		req.W = cc.w.proto()
	}
	answer, node, err := c.call(ctx, key, &pb.Frame{Body: &pb.Frame_Delete{Delete: req}})
	if err != nil {
		return err
	}
	if _, ok := answer.GetBody().(*pb.Frame_DeleteResult); !ok {
		return badAnswer("Delete", answer, node)
	}
	return nil
}

// CompareAndSwap writes value only if key's current version is *expectedVersion,
// or, when expectedVersion is nil, only if key has no live value (create only).
// It returns the new version; ErrPreconditionFailed when someone else got there
// first, which is the cue to Get again and retry.
func (c *NativeClient) CompareAndSwap(ctx context.Context, key []byte, expectedVersion *string, value []byte, opts ...CallOption) (string, error) {
	cc, err := casOptions(expectedVersion, opts)
	if err != nil {
		return "", err
	}
	return c.put(ctx, key, value, cc)
}

// nativeBatchWidth bounds the requests of one batch in flight at once: enough to
// keep the pipelines full, few enough not to trip the node's 1,024 per connection.
const nativeBatchWidth = 128

// BatchGet reads keys with concurrent pipelined requests and returns one result per
// key, in order. A key without a live value has Err matching ErrNotFound. The error
// is non-nil when some key failed for another reason; it wraps the first such failure.
func (c *NativeClient) BatchGet(ctx context.Context, keys [][]byte, opts ...CallOption) ([]GetResult, error) {
	cc, err := callOptions("BatchGet", optR, opts)
	if err != nil {
		return nil, err
	}
	results := make([]GetResult, len(keys))
	runBatch(len(keys), nativeBatchWidth, func(i int) {
		v, err := c.get(ctx, keys[i], cc)
		results[i] = GetResult{Key: keys[i], Value: v, Err: err}
	})
	return results, batchGetError(results)
}

// BatchPut writes items with concurrent pipelined requests and returns one result
// per item, in order. The error is non-nil when some item failed; it wraps the
// first failure.
func (c *NativeClient) BatchPut(ctx context.Context, items []Item, opts ...CallOption) ([]PutResult, error) {
	cc, err := callOptions("BatchPut", optTTL|optW, opts)
	if err != nil {
		return nil, err
	}
	results := make([]PutResult, len(items))
	runBatch(len(items), nativeBatchWidth, func(i int) {
		v, err := c.put(ctx, items[i].Key, items[i].Value, cc)
		results[i] = PutResult{Key: items[i].Key, Version: v, Err: err}
	})
	return results, batchPutError(results)
}

// List returns one page of live keys starting with prefix (over REST; see NativeClient).
func (c *NativeClient) List(ctx context.Context, prefix []byte, cursor string, limit int) (Page, error) {
	var page Page
	err := c.withREST(ctx, func(base string) (err error) {
		page, err = listPage(ctx, c.http, c.cfg.timeout, base, prefix, cursor, limit)
		return err
	})
	return page, err
}

// Scan iterates over every live key starting with prefix, in byte order, paging
// through the REST listing (see RESTClient.Scan).
func (c *NativeClient) Scan(ctx context.Context, prefix []byte, opts ...CallOption) iter.Seq2[[]byte, error] {
	return scan(ctx, prefix, opts, func(ctx context.Context, cursor string, limit int) (Page, error) {
		return c.List(ctx, prefix, cursor, limit)
	})
}

// Members returns the cluster's members (over REST; see NativeClient).
func (c *NativeClient) Members(ctx context.Context) ([]Member, error) {
	var members []Member
	err := c.withREST(ctx, func(base string) (err error) {
		members, err = fetchMembers(ctx, c.http, c.cfg.timeout, base)
		return err
	})
	return members, err
}

// Ring returns the cluster's partition table (over REST; see NativeClient).
func (c *NativeClient) Ring(ctx context.Context) (*Ring, error) {
	var ring *Ring
	err := c.withREST(ctx, func(base string) (err error) {
		ring, err = fetchRing(ctx, c.http, c.cfg.timeout, base)
		return err
	})
	return ring, err
}

// -- plumbing ------------------------------------------------------------------------

func badAnswer(op string, answer *pb.Frame, node string) error {
	return &Error{Kind: ErrBadResponse, Code: "bad_response", Node: node,
		Message: fmt.Sprintf("the node answered %s with %T", op, answer.GetBody())}
}

func (c *NativeClient) pool(addr string) (*nodePool, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, &Error{Kind: ErrClosed, Code: "closed", Message: "the client is closed"}
	}
	p := c.pools[addr]
	if p == nil {
		p = newNodePool(addr, &c.cfg)
		c.pools[addr] = p
	}
	return p, nil
}

// targets are the addresses to try for key, best first.
func (c *NativeClient) targets(key []byte) []string {
	if c.router != nil {
		if owners := c.router.route(key); len(owners) > 0 {
			return owners
		}
	}
	start := int(c.next.Add(1) % uint64(len(c.seeds)))
	out := make([]string, 0, len(c.seeds))
	for i := range c.seeds {
		out = append(out, c.seeds[(start+i)%len(c.seeds)])
	}
	return out
}

// call sends one request for key and returns its answer, or the typed error of an
// Error answer. It tries the targets in order while nothing has been sent (a node
// that cannot be reached, a connection that broke before the request went out),
// and gives up on the first failure after that: a request that may have been
// applied is never sent twice.
func (c *NativeClient) call(ctx context.Context, key []byte, frame *pb.Frame) (*pb.Frame, string, error) {
	if c.cfg.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.cfg.timeout)
		defer cancel()
	}
	targets := c.targets(key)
	var lastErr error
	for i := 0; i < len(targets); i++ {
		addr := targets[i]
		p, err := c.pool(addr)
		if err != nil {
			return nil, "", err
		}
		if i < len(targets)-1 && p.backingOff() != nil {
			lastErr = p.backingOff()
			continue
		}
		conn, err := p.get(ctx)
		if err == nil {
			var answer *pb.Frame
			answer, err = conn.roundTrip(ctx, frame)
			if err == nil {
				if perr := answer.GetError(); perr != nil {
					return nil, addr, withNode(requestError(perr), addr)
				}
				if c.router != nil && len(ownersOf(answer)) > 0 {
					c.router.notMine() // "not mine": the table in hand is stale
				}
				return answer, addr, nil
			}
		}
		var notSent *notSentError
		switch {
		case errors.As(err, &notSent):
			if lastErr == nil { // the connection broke before the request left: once more on a new one
				targets = slices.Insert(targets, i+1, addr)
			}
			lastErr = notSent.err
		case ctx.Err() != nil, isHandshake(err), !errors.Is(err, ErrConnection):
			return nil, addr, withNode(err, addr)
		default:
			if conn != nil { // sent, and then the connection failed: it may have been applied
				c.connectionFailed()
				return nil, addr, withNode(err, addr)
			}
			lastErr = err
		}
		c.connectionFailed()
	}
	return nil, "", lastErr
}

// ownersOf: the owners a node names in its answer when it is not one of the key's.
func ownersOf(answer *pb.Frame) []string {
	switch b := answer.GetBody().(type) {
	case *pb.Frame_GetResult:
		return b.GetResult.GetOwners()
	case *pb.Frame_PutResult:
		return b.PutResult.GetOwners()
	case *pb.Frame_DeleteResult:
		return b.DeleteResult.GetOwners()
	}
	return nil
}

// loadTopology: smart routing's table and members, over the REST API of a node.
func (c *NativeClient) loadTopology(ctx context.Context) (*Ring, []Member, error) {
	var ring *Ring
	var members []Member
	err := c.withREST(ctx, func(base string) error {
		var err error
		if ring, err = fetchRing(ctx, c.http, c.cfg.timeout, base); err != nil {
			return err
		}
		members, err = fetchMembers(ctx, c.http, c.cfg.timeout, base)
		return err
	})
	return ring, members, err
}

func nativeAddrOf(m Member) string {
	if m.PeerPort <= 0 {
		return ""
	}
	return m.NativeAddr()
}

func isHandshake(err error) bool {
	var h *HandshakeError
	return errors.As(err, &h)
}

func (c *NativeClient) connectionFailed() {
	if c.router != nil {
		c.router.kick()
	}
}

// anyConn is a live connection to one of the seeds (or a known member).
func (c *NativeClient) anyConn(ctx context.Context) (*conn, error) {
	var lastErr error
	for _, addr := range c.seeds {
		p, err := c.pool(addr)
		if err != nil {
			return nil, err
		}
		conn, err := p.get(ctx)
		if err == nil {
			return conn, nil
		}
		if ctx.Err() != nil || isHandshake(err) {
			return nil, err
		}
		lastErr = err
	}
	return nil, lastErr
}

// restBases are the REST base URLs to try, best first: WithRESTURL's, then those
// of live members known to smart routing, then those the connected nodes announced.
func (c *NativeClient) restBases(ctx context.Context) []string {
	if c.cfg.restURL != "" {
		return []string{c.cfg.restURL}
	}
	var bases []string
	seen := map[string]bool{}
	add := func(u string) {
		if !seen[u] {
			seen[u] = true
			bases = append(bases, u)
		}
	}
	if c.router != nil {
		for _, m := range c.router.liveMembers() {
			add(m.RESTURL())
		}
	}
	c.mu.Lock()
	var pools []*nodePool
	for _, addr := range c.seeds {
		if p := c.pools[addr]; p != nil {
			pools = append(pools, p)
		}
	}
	c.mu.Unlock()
	for _, p := range pools {
		if conn := p.liveConn(); conn != nil {
			add(restURLOf(conn))
		}
	}
	if len(bases) == 0 {
		if conn, err := c.anyConn(ctx); err == nil {
			add(restURLOf(conn))
		}
	}
	return bases
}

// restURLOf is the REST base URL a node announced in its Hello. An empty or
// unspecified host (a node bound to 0.0.0.0 without --advertise) is replaced by the
// host the client dialed.
func restURLOf(conn *conn) string {
	addrs := conn.hello.GetAddresses()
	host := addrs.GetHost()
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		host, _, _ = net.SplitHostPort(conn.addr)
	}
	port := addrs.GetRestPort()
	if port == 0 {
		port = 8080
	}
	return "http://" + net.JoinHostPort(host, strconv.Itoa(int(port)))
}

// withREST runs fn against each REST base in turn until one answers (connection
// errors move on to the next; any answer, error or not, is the result).
func (c *NativeClient) withREST(ctx context.Context, fn func(base string) error) error {
	c.mu.Lock()
	closed := c.closed
	c.mu.Unlock()
	if closed {
		return &Error{Kind: ErrClosed, Code: "closed", Message: "the client is closed"}
	}
	bases := c.restBases(ctx)
	if len(bases) == 0 {
		return &Error{Kind: ErrConnection, Code: "connection_error", Message: "no node reachable to find a REST API"}
	}
	var err error
	for _, base := range bases {
		err = fn(base)
		if err == nil || !errors.Is(err, ErrConnection) || ctx.Err() != nil {
			return err
		}
	}
	return err
}
