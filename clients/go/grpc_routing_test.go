package dhashmap

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	pb "github.com/dhashmap/dhashmap/clients/go/dhashmappb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
)

// routeStub is an in-process gRPC node for smart routing: Get echoes the key, Put
// answers a version naming the node, and Cluster serves a table whose every
// partition is owned by owners (node ids), with the members in members.
type routeStub struct {
	pb.UnimplementedKVServer
	pb.UnimplementedClusterServer
	id         string
	hits       atomic.Int32
	ringLoads  atomic.Int32
	mu         sync.Mutex
	owners     []string
	members    []*pb.Member
	server     *grpc.Server
	listenAddr string
}

func (s *routeStub) Get(ctx context.Context, r *pb.GetRequest) (*pb.GetResponse, error) {
	s.hits.Add(1)
	s.notMine(ctx)
	return &pb.GetResponse{Value: r.GetKey(), Version: s.id}, nil
}

func (s *routeStub) Put(ctx context.Context, _ *pb.PutRequest) (*pb.PutResponse, error) {
	s.hits.Add(1)
	s.notMine(ctx)
	return &pb.PutResponse{Version: s.id, Created: true}, nil
}

// notMine: like a real node, a stub that is not an owner names the owners in the
// trailing metadata dhashmap-owners (and still answers: it coordinates).
func (s *routeStub) notMine(ctx context.Context) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !slices.Contains(s.owners, s.id) {
		_ = grpc.SetTrailer(ctx, metadata.Pairs("dhashmap-owners", strings.Join(s.owners, ",")))
	}
}

func (s *routeStub) Ring(context.Context, *pb.RingRequest) (*pb.RingResponse, error) {
	s.ringLoads.Add(1)
	s.mu.Lock()
	defer s.mu.Unlock()
	resp := &pb.RingResponse{Partitions: 4, Replicas: uint32(len(s.owners)), Hash: "xxh64"}
	for p := range 4 {
		resp.Table = append(resp.Table, &pb.RingResponse_Partition{Partition: uint32(p), Owners: s.owners})
	}
	return resp, nil
}

func (s *routeStub) Members(context.Context, *pb.MembersRequest) (*pb.MembersResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return &pb.MembersResponse{Node: s.id, Members: s.members}, nil
}

func startRouteStub(t *testing.T, id string) *routeStub {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &routeStub{id: id, server: grpc.NewServer(), listenAddr: l.Addr().String()}
	pb.RegisterKVServer(s.server, s)
	pb.RegisterClusterServer(s.server, s)
	go s.server.Serve(l)
	t.Cleanup(s.server.Stop)
	return s
}

func (s *routeStub) member() *pb.Member {
	host, port, _ := net.SplitHostPort(s.listenAddr)
	p, _ := strconv.Atoi(port)
	return &pb.Member{Id: s.id, State: "alive", Host: host, GrpcPort: uint32(p), Weight: 1}
}

func (s *routeStub) serve(owners []string, members ...*pb.Member) {
	s.mu.Lock()
	s.owners, s.members = owners, members
	s.mu.Unlock()
}

// Seeded with b, the client sends every key to its first owner a; when a goes
// away, reads and writes go to the next owner b, and the table is reloaded.
func TestGRPCSmartRoutingFailover(t *testing.T) {
	ctx := context.Background()
	a, b := startRouteStub(t, "a"), startRouteStub(t, "b")
	for _, s := range []*routeStub{a, b} {
		s.serve([]string{"a", "b"}, a.member(), b.member())
	}
	c, err := NewGRPCClient(ctx, b.listenAddr, WithSmartRouting(), WithTimeout(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for i := range 20 {
		if v, err := c.Get(ctx, []byte{byte(i)}); err != nil || !bytes.Equal(v.Value, []byte{byte(i)}) || v.Version != "a" {
			t.Fatalf("Get %d: %+v %v", i, v, err)
		}
	}
	if v, err := c.Put(ctx, []byte("k"), []byte("v")); err != nil || v != "a" {
		t.Fatalf("Put: %q %v", v, err)
	}
	if a.hits.Load() != 21 || b.hits.Load() != 0 {
		t.Fatalf("first owner a got %d requests, b %d; want 21 and 0", a.hits.Load(), b.hits.Load())
	}

	loads := b.ringLoads.Load()
	a.server.Stop() // a goes away: its connection closes and nothing listens any more
	for i := range 20 {
		if v, err := c.Get(ctx, []byte{byte(i)}); err != nil || v.Version != "b" {
			t.Fatalf("Get %d with a down: %+v %v", i, v, err)
		}
	}
	// A write goes to b too: it was never sent to a (grpc could not connect), so it is safe to send on.
	if v, err := c.Put(ctx, []byte("k"), []byte("v")); err != nil || v != "b" {
		t.Fatalf("Put with a down: %q %v", v, err)
	}
	if b.hits.Load() != 21 {
		t.Fatalf("the next owner b got %d of 21 requests", b.hits.Load())
	}
	deadline := time.Now().Add(5 * time.Second)
	for b.ringLoads.Load() == loads {
		if time.Now().After(deadline) {
			t.Fatal("the table was not reloaded after the connection error")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// A reloaded table moves keys: after the cluster's table changes (b is now the
// first owner), the next periodic reload makes the client follow it.
func TestGRPCSmartRoutingFollowsANewTable(t *testing.T) {
	ctx := context.Background()
	a, b := startRouteStub(t, "a"), startRouteStub(t, "b")
	for _, s := range []*routeStub{a, b} {
		s.serve([]string{"a"}, a.member(), b.member())
	}
	c, err := NewGRPCClient(ctx, b.listenAddr, WithSmartRouting(), WithRefreshInterval(50*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if v, err := c.Get(ctx, []byte("k")); err != nil || v.Version != "a" {
		t.Fatalf("Get: %+v %v", v, err)
	}
	b.serve([]string{"b"}, b.member()) // a left the cluster
	deadline := time.Now().Add(5 * time.Second)
	for {
		v, err := c.Get(ctx, []byte("k"))
		if err != nil {
			t.Fatal(err)
		}
		if v.Version == "b" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the client kept routing to a after the table changed")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// A table that is correct causes no reload. When the cluster's table changes
// under the client, the node it still routes to answers "not mine" (trailing
// metadata dhashmap-owners): the client reloads its table once, in the
// background, and later requests go to the new owner.
func TestGRPCSmartRoutingNotMine(t *testing.T) {
	ctx := context.Background()
	a, b := startRouteStub(t, "a"), startRouteStub(t, "b")
	for _, s := range []*routeStub{a, b} {
		s.serve([]string{"a"}, a.member(), b.member())
	}
	c, err := NewGRPCClient(ctx, b.listenAddr, WithSmartRouting(), WithRefreshInterval(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for i := range 20 {
		if v, err := c.Get(ctx, []byte{byte(i)}); err != nil || v.Version != "a" {
			t.Fatalf("Get %d: %+v %v", i, v, err)
		}
		if v, err := c.Put(ctx, []byte{byte(i)}, []byte("v")); err != nil || v != "a" {
			t.Fatalf("Put %d: %q %v", i, v, err)
		}
	}
	if n, r := b.ringLoads.Load(), c.routing.router.notMineReloads.Load(); n != 1 || r != 0 {
		t.Fatalf("with a correct table: %d table loads, %d for not mine; want 1 and 0", n, r)
	}

	for _, s := range []*routeStub{a, b} { // b owns every key now; the client does not know
		s.serve([]string{"b"}, a.member(), b.member())
	}
	if v, err := c.Get(ctx, []byte("k")); err != nil || v.Version != "a" {
		t.Fatalf("Get by the stale table: %+v %v (a still answers: it coordinates)", v, err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for b.ringLoads.Load() == 1 {
		if time.Now().After(deadline) {
			t.Fatal("not mine did not reload the table")
		}
		time.Sleep(5 * time.Millisecond)
	}
	hitsA := a.hits.Load()
	for i := range 20 {
		if v, err := c.Get(ctx, []byte{byte(i)}); err != nil || v.Version != "b" {
			t.Fatalf("Get %d after the reload: %+v %v", i, v, err)
		}
	}
	time.Sleep(minRefreshGap + 200*time.Millisecond) // room for a second reload, if one were asked for
	if n, r := b.ringLoads.Load(), c.routing.router.notMineReloads.Load(); n != 2 || r != 1 || a.hits.Load() != hitsA {
		t.Fatalf("%d table loads, %d for not mine, a hit %d more times; want 2, 1, 0", n, r, a.hits.Load()-hitsA)
	}
}

// methodCounter records, per gRPC target, the keys of the KV calls a client sends.
type methodCounter struct {
	mu     sync.Mutex
	byAddr map[string][][]byte
}

func (m *methodCounter) intercept(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn,
	invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	var key []byte
	switch r := req.(type) {
	case *pb.GetRequest:
		key = r.GetKey()
	case *pb.PutRequest:
		key = r.GetKey()
	case *pb.DeleteRequest:
		key = r.GetKey()
	case *pb.CompareAndSwapRequest:
		key = r.GetKey()
	}
	if key != nil {
		m.mu.Lock()
		addr := strings.TrimPrefix(cc.Target(), "passthrough:///")
		m.byAddr[addr] = append(m.byAddr[addr], key)
		m.mu.Unlock()
	}
	return invoker(ctx, method, req, reply, cc, opts...)
}

// Against the live cluster, every keyed gRPC call goes straight to the key's first
// owner, and the answers are those of a client that lets one node coordinate.
func TestLiveGRPCSmartRouting(t *testing.T) {
	ctx := context.Background()
	c := useCluster(t)
	counter := &methodCounter{byAddr: map[string][][]byte{}}
	smart := c.grpcClient(t, 0, WithSmartRouting(), WithGRPCDialOptions(grpc.WithChainUnaryInterceptor(counter.intercept)))
	plain := c.grpcClient(t, 1)
	ring, err := plain.Ring(ctx)
	if err != nil {
		t.Fatal(err)
	}
	addrOf := map[string]string{}
	for _, n := range c.nodes {
		addrOf[n.id] = n.grpcAddr()
	}
	prefix := testKey(t, "grpc-route")
	want := map[string]int{}
	for i := range 60 {
		k := append(slices.Clone(prefix), fmt.Sprintf("/%d", i)...)
		version, err := smart.Put(ctx, k, []byte{byte(i)})
		if err != nil {
			t.Fatal(err)
		}
		got, err := plain.Get(ctx, k)
		if err != nil || got.Version != version || !bytes.Equal(got.Value, []byte{byte(i)}) {
			t.Fatalf("routed Put %s, unrouted Get: %+v %v (version %s)", k, got, err, version)
		}
		again, err := smart.Get(ctx, k)
		if err != nil || again.Version != got.Version || !bytes.Equal(again.Value, got.Value) {
			t.Fatalf("routed Get %s: %+v %v, want %+v", k, again, err, got)
		}
		if _, err := smart.CompareAndSwap(ctx, k, &version, []byte("x")); err != nil {
			t.Fatal(err)
		}
		if err := smart.Delete(ctx, k); err != nil {
			t.Fatal(err)
		}
		if _, err := plain.Get(ctx, k); !errors.Is(err, ErrNotFound) {
			t.Fatalf("after a routed Delete, the unrouted Get: %v", err)
		}
		want[addrOf[ring.OwnersOf(k)[0]]] += 4
	}
	counter.mu.Lock()
	defer counter.mu.Unlock()
	got := map[string]int{}
	for addr, sent := range counter.byAddr {
		for _, k := range sent {
			if owner := addrOf[ring.OwnersOf(k)[0]]; owner != addr {
				t.Fatalf("key %s went to %s; its first owner is %s", k, addr, owner)
			}
		}
		got[addr] = len(sent)
	}
	t.Logf("gRPC requests per node: %v", got)
	for _, n := range c.nodes {
		if got[n.grpcAddr()] != want[n.grpcAddr()] || got[n.grpcAddr()] == 0 {
			t.Fatalf("requests per node %v, want %v", got, want)
		}
	}
}
