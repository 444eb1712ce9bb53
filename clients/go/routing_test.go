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
