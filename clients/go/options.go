package dhashmap

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	pb "github.com/dhashmap/dhashmap/clients/go/dhashmappb"
	"google.golang.org/grpc"
)

const (
	// DefaultCluster is the cluster name a node has unless started with --cluster.
	DefaultCluster = "dhashmap"
	// DefaultTimeout bounds each request when ctx has no earlier deadline. The node's
	// own replica requests time out after 2 s, so this leaves room above that.
	DefaultTimeout = 10 * time.Second
	// DefaultPoolSize is the number of native connections kept per node.
	DefaultPoolSize = 2
	// DefaultRefreshInterval is how often smart routing reloads the partition table.
	DefaultRefreshInterval = 30 * time.Second
	// DefaultMaxFrame is the largest frame accepted from a node: the largest limit any
	// valid node configuration allows (1 GiB values + 64 KiB keys + 1 MiB).
	DefaultMaxFrame = (1 << 30) + (64 << 10) + (1 << 20)
	// MaxTTL is the longest TTL the node accepts (10 years).
	MaxTTL = 315360000 * time.Second

	protocolVersion = 3
)

// Option configures a client (NewNativeClient, NewRESTClient). Options that concern
// only one transport are ignored by the other.
type Option func(*config)

type config struct {
	cluster         string
	timeout         time.Duration
	poolSize        int
	smart           bool
	refresh         time.Duration
	restURL         string
	httpClient      *http.Client
	dial            func(ctx context.Context, network, addr string) (net.Conn, error)
	maxFrame        int
	backoffMin      time.Duration
	backoffMax      time.Duration
	softwareVersion string
	grpcDialOptions []grpc.DialOption
}

func newConfig(opts []Option) config {
	c := config{
		cluster:         DefaultCluster,
		timeout:         DefaultTimeout,
		poolSize:        DefaultPoolSize,
		refresh:         DefaultRefreshInterval,
		maxFrame:        DefaultMaxFrame,
		backoffMin:      50 * time.Millisecond,
		backoffMax:      5 * time.Second,
		softwareVersion: "dhashmap-go/" + Version,
	}
	for _, o := range opts {
		o(&c)
	}
	if c.dial == nil {
		d := &net.Dialer{KeepAlive: 30 * time.Second}
		c.dial = d.DialContext
	}
	return c
}

// WithCluster sets the cluster name the native client expects in the node's Hello
// (default "dhashmap"). A node of another cluster fails with *HandshakeError.
func WithCluster(name string) Option { return func(c *config) { c.cluster = name } }

// WithTimeout bounds connecting and each request (default 10 s). A ctx deadline that
// comes earlier wins. Zero or less means no timeout other than ctx's.
func WithTimeout(d time.Duration) Option { return func(c *config) { c.timeout = d } }

// WithPoolSize sets how many native connections are kept per node (default 2).
// Requests are pipelined on each, so a few are enough.
func WithPoolSize(n int) Option {
	return func(c *config) {
		if n > 0 {
			c.poolSize = n
		}
	}
}

// WithSmartRouting makes the native client send each key's requests straight to
// the first live node of the key's preference list, computed from the cluster's
// partition table (docs/partitioning.md), instead of to any node (which would then
// forward them). Answers are the same; a hop is saved.
func WithSmartRouting() Option { return func(c *config) { c.smart = true } }

// WithRefreshInterval sets how often smart routing reloads the partition table and
// the member list (default 30 s); it is also reloaded after a connection error.
func WithRefreshInterval(d time.Duration) Option {
	return func(c *config) {
		if d > 0 {
			c.refresh = d
		}
	}
}

// WithRESTURL tells the native client where a node's REST API is, for Scan, Members,
// Ring and smart routing. By default the client uses the REST port each node
// announces in its Hello.
func WithRESTURL(url string) Option { return func(c *config) { c.restURL = url } }

// WithHTTPClient sets the *http.Client for REST requests.
func WithHTTPClient(h *http.Client) Option { return func(c *config) { c.httpClient = h } }

// WithDialer replaces how native connections are opened (net.Dialer by default):
// for a proxy, TLS, or a test that observes the traffic.
func WithDialer(dial func(ctx context.Context, network, addr string) (net.Conn, error)) Option {
	return func(c *config) { c.dial = dial }
}

// WithGRPCDialOptions adds options to the gRPC client's connection (after its
// own, so they win): transport credentials for TLS, keepalive, interceptors.
func WithGRPCDialOptions(opts ...grpc.DialOption) Option {
	return func(c *config) { c.grpcDialOptions = append(c.grpcDialOptions, opts...) }
}

// WithMaxFrame sets the largest frame accepted from a node (default DefaultMaxFrame).
func WithMaxFrame(n int) Option {
	return func(c *config) {
		if n > 0 {
			c.maxFrame = n
		}
	}
}

// WithBackoff sets the wait before reconnecting to a node that could not be
// reached: min after the first failure, doubling up to max (defaults 50 ms, 5 s).
func WithBackoff(min, max time.Duration) Option {
	return func(c *config) {
		if min > 0 && max >= min {
			c.backoffMin, c.backoffMax = min, max
		}
	}
}

// Consistency is how many replicas must answer a read (WithR) or acknowledge a
// write (WithW): One, Quorum (the node's default: N/2+1), All, or Replicas(n).
type Consistency struct {
	level pb.Consistency_Level
	count int // > 0: exactly that many; < 0: invalid (Replicas(n) with n < 1)
}

var (
	One    = Consistency{level: pb.Consistency_LEVEL_ONE}
	Quorum = Consistency{level: pb.Consistency_LEVEL_QUORUM}
	All    = Consistency{level: pb.Consistency_LEVEL_ALL}
)

// Replicas asks for exactly n replicas (1 to the key's replica count N).
func Replicas(n int) Consistency {
	if n < 1 {
		return Consistency{count: -1}
	}
	return Consistency{count: n}
}

func (c Consistency) String() string {
	switch {
	case c.count > 0:
		return strconv.Itoa(c.count)
	case c.count < 0:
		return "invalid"
	}
	switch c.level {
	case pb.Consistency_LEVEL_ONE:
		return "one"
	case pb.Consistency_LEVEL_QUORUM:
		return "quorum"
	case pb.Consistency_LEVEL_ALL:
		return "all"
	}
	return "default"
}

func (c Consistency) proto() *pb.Consistency {
	if c.count > 0 {
		return &pb.Consistency{Count: uint32(c.count)}
	}
	if c.level == pb.Consistency_LEVEL_DEFAULT {
		return nil
	}
	return &pb.Consistency{Level: c.level}
}

// CallOption modifies one operation. Each operation accepts only those that make
// sense for it and refuses the others with ErrInvalidRequest:
//
//	Get, BatchGet:          WithR
//	Put:                    WithTTL, WithW, WithIfMatch, WithIfNoneMatch
//	CompareAndSwap, BatchPut: WithTTL, WithW
//	Delete:                 WithW, WithIfMatch
//	Scan:                   WithPageSize
type CallOption func(*callConfig)

type optionSet uint8

const (
	optTTL optionSet = 1 << iota
	optW
	optR
	optIfMatch
	optIfNoneMatch
	optPageSize
)

var optionNames = []string{"WithTTL", "WithW", "WithR", "WithIfMatch", "WithIfNoneMatch", "WithPageSize"}

type callConfig struct {
	set         optionSet
	ttl         time.Duration
	w, r        Consistency
	ifMatch     string
	ifNoneMatch bool
	pageSize    int
}

// WithTTL makes a written value expire after d: whole seconds, 1 s to MaxTTL.
// (On the native protocol a TTL of 0 means "never", so a zero or fractional TTL is
// refused rather than rounded.)
func WithTTL(d time.Duration) CallOption {
	return func(c *callConfig) { c.set |= optTTL; c.ttl = d }
}

// WithW sets how many replicas must acknowledge a write.
func WithW(w Consistency) CallOption { return func(c *callConfig) { c.set |= optW; c.w = w } }

// WithR sets how many replicas must answer a read.
func WithR(r Consistency) CallOption { return func(c *callConfig) { c.set |= optR; c.r = r } }

// WithIfMatch makes a Put or Delete happen only if the key's current version is
// version ("*": only if the key has a live value); else ErrPreconditionFailed.
func WithIfMatch(version string) CallOption {
	return func(c *callConfig) { c.set |= optIfMatch; c.ifMatch = version }
}

// WithIfNoneMatch makes a Put happen only if the key has no live value (create only).
func WithIfNoneMatch() CallOption {
	return func(c *callConfig) { c.set |= optIfNoneMatch; c.ifNoneMatch = true }
}

// callOptions applies opts and checks them against what op accepts.
func callOptions(op string, allowed optionSet, opts []CallOption) (callConfig, error) {
	var c callConfig
	for _, o := range opts {
		if o != nil {
			o(&c)
		}
	}
	if extra := c.set &^ allowed; extra != 0 {
		var names []string
		for i, name := range optionNames {
			if extra&(1<<i) != 0 {
				names = append(names, name)
			}
		}
		return c, newError(ErrInvalidRequest, "invalid_request",
			fmt.Sprintf("%s does not take %s", op, strings.Join(names, ", ")))
	}
	if c.set&optTTL != 0 {
		if c.ttl < time.Second || c.ttl > MaxTTL || c.ttl%time.Second != 0 {
			return c, newError(ErrInvalidRequest, "invalid_request",
				fmt.Sprintf("ttl must be whole seconds from 1 s to %d s, not %v", int64(MaxTTL/time.Second), c.ttl))
		}
	}
	for _, l := range []struct {
		name string
		bit  optionSet
		c    Consistency
	}{{"w", optW, c.w}, {"r", optR, c.r}} {
		// A count of 0 would mean "the node's default" on the wire: refuse it rather
		// than silently read or write at quorum.
		if c.set&l.bit != 0 && (l.c.count < 0 || l.c.count > 1<<32-1) {
			return c, newError(ErrInvalidRequest, "invalid_request", l.name+" must be at least 1 replica")
		}
	}
	if c.set&optIfMatch != 0 {
		token, err := matchToken(c.ifMatch)
		if err != nil {
			return c, err
		}
		c.ifMatch = token
	}
	return c, nil
}

// matchToken: the bare version token for If-Match; a quoted ETag (as copied from a
// REST response) is unquoted, and "*" passes through. An empty token is refused: on
// the wire it would mean "no condition".
func matchToken(version string) (string, error) {
	if version == "*" {
		return version, nil
	}
	token := version
	if len(token) >= 2 && token[0] == '"' && token[len(token)-1] == '"' {
		token = token[1 : len(token)-1]
	}
	if token == "" {
		return "", newError(ErrInvalidRequest, "invalid_request", "a version token must not be empty")
	}
	for _, r := range token {
		if r <= ' ' || r > '~' || r == '"' || r == ',' {
			return "", newError(ErrInvalidRequest, "invalid_request", fmt.Sprintf("not a version token: %q", version))
		}
	}
	return token, nil
}
