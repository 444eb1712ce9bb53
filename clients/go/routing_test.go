package dhashmap

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	pb "github.com/dhashmap/dhashmap/clients/go/dhashmappb"
)

// Against fake nodes that answer "not mine" (GetResult.owners) when the table the
// fake REST API serves does not name them: a correct table causes no reload; a
// stale one causes exactly one, in the background, after which keys go to the
// right node.
func TestFakeSmartRoutingNotMine(t *testing.T) {
	var owner atomic.Value
	owner.Store("a")
	var hitsA, hitsB atomic.Int32
	node := func(id string, hits *atomic.Int32) *fakeNode {
		return newFakeNode(t, func(s *fakeSession, f *pb.Frame) {
			hits.Add(1)
			if get := f.GetGet(); get != nil && owner.Load() != id {
				s.answer(f.GetId(), &pb.GetResult{Found: true, Value: get.GetKey(), Version: id,
					Owners: []string{owner.Load().(string)}})
				return
			}
			s.answer(f.GetId(), &pb.GetResult{Found: true, Value: f.GetGet().GetKey(), Version: id})
		})
	}
	a, b := node("a", &hitsA), node("b", &hitsB)
	member := func(id, addr string) map[string]any {
		host, port, _ := net.SplitHostPort(addr)
		p, _ := strconv.Atoi(port)
		return map[string]any{"id": id, "state": "alive", "addresses": map[string]any{"host": host, "peer": p, "rest": 1}, "weight": 1}
	}
	var ringLoads atomic.Int32
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/v1/cluster/ring":
			ringLoads.Add(1)
			var table []map[string]any
			for p := range 4 {
				table = append(table, map[string]any{"partition": p, "owners": []string{owner.Load().(string)}})
			}
			_ = json.NewEncoder(w).Encode(map[string]any{"partitions": 4, "replicas": 1, "hash": "xxh64", "nodes": []string{"a", "b"}, "table": table})
		case "/v1/cluster/members":
			_ = json.NewEncoder(w).Encode(map[string]any{"members": []any{member("a", a.addr()), member("b", b.addr())}})
		default:
			http.NotFound(w, r)
		}
	}))
	defer api.Close()

	c := fakeClient(t, b, WithSmartRouting(), WithRESTURL(api.URL), WithPoolSize(1), WithRefreshInterval(time.Hour))
	ctx := context.Background()
	for i := range 20 {
		if v, err := c.Get(ctx, []byte{byte(i)}); err != nil || v.Version != "a" {
			t.Fatalf("Get %d: %+v %v", i, v, err)
		}
	}
	if n, r := ringLoads.Load(), c.router.notMineReloads.Load(); n != 1 || r != 0 {
		t.Fatalf("with a correct table: %d table loads, %d for not mine; want 1 and 0", n, r)
	}

	owner.Store("b") // the cluster's table changed; the client's is stale
	if v, err := c.Get(ctx, []byte("k")); err != nil || v.Version != "a" {
		t.Fatalf("Get by the stale table: %+v %v", v, err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for ringLoads.Load() == 1 {
		if time.Now().After(deadline) {
			t.Fatal("not mine did not reload the table")
		}
		time.Sleep(5 * time.Millisecond)
	}
	before := hitsA.Load()
	for i := range 20 {
		if v, err := c.Get(ctx, []byte{byte(i)}); err != nil || v.Version != "b" {
			t.Fatalf("Get %d after the reload: %+v %v", i, v, err)
		}
	}
	time.Sleep(minRefreshGap + 200*time.Millisecond)
	if n, r := ringLoads.Load(), c.router.notMineReloads.Load(); n != 2 || r != 1 || hitsA.Load() != before {
		t.Fatalf("%d table loads, %d for not mine, a hit %d more times; want 2, 1, 0", n, r, hitsA.Load()-before)
	}
}

// Smart routing against fake nodes and a fake REST API: requests go to the first
// owner; when it goes away they go to the next owner, and the table is reloaded.
func TestFakeSmartRoutingFailover(t *testing.T) {
	var hitsA, hitsB atomic.Int32
	a := newFakeNode(t, func(s *fakeSession, f *pb.Frame) { hitsA.Add(1); echo(s, f) })
	b := newFakeNode(t, func(s *fakeSession, f *pb.Frame) { hitsB.Add(1); echo(s, f) })
	member := func(id, addr string) map[string]any {
		host, port, _ := net.SplitHostPort(addr)
		p, _ := strconv.Atoi(port)
		return map[string]any{"id": id, "state": "alive", "addresses": map[string]any{"host": host, "peer": p, "rest": 1}, "weight": 1}
	}
	var ringLoads atomic.Int32
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/v1/cluster/ring":
			ringLoads.Add(1)
			var table []map[string]any
			for p := range 4 {
				table = append(table, map[string]any{"partition": p, "owners": []string{"a", "b"}})
			}
			_ = json.NewEncoder(w).Encode(map[string]any{"partitions": 4, "replicas": 2, "hash": "xxh64", "nodes": []string{"a", "b"}, "table": table})
		case "/v1/cluster/members":
			_ = json.NewEncoder(w).Encode(map[string]any{"members": []any{member("a", a.addr()), member("b", b.addr())}})
		default:
			http.NotFound(w, r)
		}
	}))
	defer api.Close()

	// Seeded with b only: the table, not the seed, decides where keys go.
	c := fakeClient(t, b, WithSmartRouting(), WithRESTURL(api.URL), WithPoolSize(1))
	hitsB.Store(0)
	for i := range 20 {
		if v, err := c.Get(context.Background(), []byte{byte(i)}); err != nil || v.Value[0] != byte(i) {
			t.Fatalf("Get: %v %v", v, err)
		}
	}
	if hitsA.Load() != 20 || hitsB.Load() != 0 {
		t.Fatalf("first owner a got %d, b %d", hitsA.Load(), hitsB.Load())
	}

	// a goes away: its connection closes and it refuses new ones.
	a.ln.Close()
	c.mu.Lock()
	c.pools[a.addr()].liveConn().nc.Close()
	c.mu.Unlock()
	loads := ringLoads.Load()
	for i := range 20 {
		if v, err := c.Get(context.Background(), []byte{byte(i)}); err != nil || v.Value[0] != byte(i) {
			t.Fatalf("Get with a down: %v %v", v, err)
		}
	}
	if hitsB.Load() != 20 {
		t.Fatalf("the next owner b got %d of 20", hitsB.Load())
	}
	deadline := time.Now().Add(5 * time.Second)
	for ringLoads.Load() == loads {
		if time.Now().After(deadline) {
			t.Fatal("the table was not reloaded after the connection error")
		}
		time.Sleep(10 * time.Millisecond)
	}
}
