package dhashmap

import (
	"context"
	"errors"
	"strings"
	"sync"

	"google.golang.org/grpc/connectivity"
)

// grpcRouting is smart routing for GRPCClient: the same router as the native
// client's, loaded over gRPC (Cluster.Ring and Cluster.Members), with one
// GRPCClient per member's gRPC address, dialed on first use.
type grpcRouting struct {
	seed   *GRPCClient
	cfg    config
	router *router

	mu     sync.Mutex
	nodes  map[string]*GRPCClient
	closed bool
}

func newGRPCRouting(seed *GRPCClient, cfg config) *grpcRouting {
	cfg.smart = false // the per-node clients route nothing themselves
	g := &grpcRouting{seed: seed, cfg: cfg, nodes: map[string]*GRPCClient{seed.addr: seed}}
	g.router = newRouter(routerSource{load: g.load, addr: Member.GRPCAddr, seeds: []string{seed.addr},
		refresh: cfg.refresh, timeout: cfg.timeout})
	seed.notMine = g.router.notMine
	return g
}

// load reads the table and the members from the seed, or else from another live
// member it knows.
func (g *grpcRouting) load(ctx context.Context) (*Ring, []Member, error) {
	candidates := []string{g.seed.addr}
	for _, m := range g.router.liveMembers() {
		if a := m.GRPCAddr(); a != "" && a != g.seed.addr {
			candidates = append(candidates, a)
		}
	}
	var lastErr error
	for _, addr := range candidates {
		n, err := g.node(addr)
		if err != nil {
			return nil, nil, err
		}
		ring, err := n.Ring(ctx)
		var members []Member
		if err == nil {
			members, err = n.Members(ctx)
		}
		if err == nil {
			return ring, members, nil
		}
		lastErr = err
		if !errors.Is(err, ErrConnection) || ctx.Err() != nil {
			return nil, nil, err
		}
	}
	return nil, nil, lastErr
}

// node is the client for one gRPC address.
func (g *grpcRouting) node(addr string) (*GRPCClient, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return nil, &Error{Kind: ErrClosed, Code: "closed", Message: "the client is closed"}
	}
	if n := g.nodes[addr]; n != nil {
		return n, nil
	}
	n, err := dialGRPC(addr, g.cfg)
	if err != nil {
		return nil, err
	}
	n.notMine = g.router.notMine
	g.nodes[addr] = n
	return n, nil
}

// targets are the clients to try for key, best first: its live owners, then the
// seed. An owner whose connection is known to be failing is left out (unless
// nothing else is left), so a dead node costs no request once grpc has noticed.
func (g *grpcRouting) targets(key []byte) ([]*GRPCClient, error) {
	addrs := g.router.route(key)
	if len(addrs) == 0 {
		addrs = []string{g.seed.addr}
	}
	var ok, failing []*GRPCClient
	for _, addr := range addrs {
		n, err := g.node(addr)
		if err != nil {
			return nil, err
		}
		if n.conn.GetState() == connectivity.TransientFailure {
			failing = append(failing, n)
		} else {
			ok = append(ok, n)
		}
	}
	return append(ok, failing...), nil
}

func (g *grpcRouting) close() {
	g.router.stop()
	g.mu.Lock()
	g.closed = true
	nodes := g.nodes
	g.nodes = nil
	g.mu.Unlock()
	for addr, n := range nodes {
		if addr != g.seed.addr {
			n.conn.Close()
		}
	}
}

// onKey runs op on the client of key's first reachable owner (with smart routing),
// or on c. A target that cannot be reached makes the router reload its table soon;
// the next target is tried when the call is idempotent or was never sent (grpc
// could not dial), so a write is never sent twice.
func (c *GRPCClient) onKey(key []byte, idempotent bool, op func(n *GRPCClient) error) error {
	if c.routing == nil {
		return op(c)
	}
	targets, err := c.routing.targets(key)
	if err != nil {
		return err
	}
	for _, n := range targets {
		err = op(n)
		if err == nil || !errors.Is(err, ErrConnection) {
			return err
		}
		c.routing.router.kick()
		if !idempotent && !neverSent(err) {
			return err
		}
	}
	return err
}

// neverSent: grpc-go failed the call because it could not connect, so the request
// did not leave the client.
func neverSent(err error) bool {
	var e *Error
	if !errors.As(err, &e) {
		return false
	}
	// ("connection error: desc = ..." is grpc-go failing the call at pick time, before it has a
	// transport to send on: a refused or reset connection, a failed handshake.)
	return strings.Contains(e.Message, "while dialing") || strings.Contains(e.Message, "connection refused") ||
		strings.Contains(e.Message, "connection error: desc =")
}
