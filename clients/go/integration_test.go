package dhashmap

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"sort"
	"sync"
	"testing"
	"time"

	pb "github.com/dhashmap/dhashmap/clients/go/dhashmappb"
	"google.golang.org/protobuf/proto"
)

// The integration tests run against a live 3-node cluster (cluster_test.go).

// kvClient is what both transports offer; the tests run the same checks on each.
type kvClient interface {
	Get(ctx context.Context, key []byte, opts ...CallOption) (Value, error)
	Put(ctx context.Context, key, value []byte, opts ...CallOption) (string, error)
	Delete(ctx context.Context, key []byte, opts ...CallOption) error
	CompareAndSwap(ctx context.Context, key []byte, expectedVersion *string, value []byte, opts ...CallOption) (string, error)
	BatchGet(ctx context.Context, keys [][]byte, opts ...CallOption) ([]GetResult, error)
	BatchPut(ctx context.Context, items []Item, opts ...CallOption) ([]PutResult, error)
	List(ctx context.Context, prefix []byte, cursor string, limit int) (Page, error)
	Members(ctx context.Context) ([]Member, error)
	Ring(ctx context.Context) (*Ring, error)
}

var (
	_ kvClient = (*NativeClient)(nil)
	_ kvClient = (*RESTClient)(nil)
	_ kvClient = (*GRPCClient)(nil)
)

func transports(t *testing.T) map[string]kvClient {
	c := useCluster(t)
	return map[string]kvClient{
		"native": c.nativeClient(t),
		"smart":  c.nativeClient(t, WithSmartRouting()),
		"rest":   c.restClient(t, 1),
		"grpc":   c.grpcClient(t, 2),
		// gRPC with smart routing: the same answers, each keyed call sent to the key's owner.
		"grpc-smart": c.grpcClient(t, 0, WithSmartRouting()),
	}
}

func testKey(t *testing.T, name string) []byte {
	return []byte(fmt.Sprintf("%s/%s/%d", t.Name(), name, time.Now().UnixNano()))
}

func TestLiveRoundTrip(t *testing.T) {
	ctx := context.Background()
	for name, c := range transports(t) {
		t.Run(name, func(t *testing.T) {
			key := testKey(t, "k")
			if _, err := c.Get(ctx, key); !errors.Is(err, ErrNotFound) {
				t.Fatalf("Get before Put: %v", err)
			}
			v1, err := c.Put(ctx, key, []byte("one"))
			if err != nil {
				t.Fatal(err)
			}
			got, err := c.Get(ctx, key)
			if err != nil || string(got.Value) != "one" || got.Version != v1 {
				t.Fatalf("Get: %q %s %v, want one %s", got.Value, got.Version, err, v1)
			}
			v2, err := c.CompareAndSwap(ctx, key, &v1, []byte("two"))
			if err != nil || v2 == v1 {
				t.Fatalf("CAS: %s %v", v2, err)
			}
			if _, err := c.CompareAndSwap(ctx, key, &v1, []byte("three")); !errors.Is(err, ErrPreconditionFailed) {
				t.Fatalf("CAS with a stale version: %v", err)
			}
			if _, err := c.CompareAndSwap(ctx, key, nil, []byte("three")); !errors.Is(err, ErrPreconditionFailed) {
				t.Fatalf("create-only on a live key: %v", err)
			}
			if err := c.Delete(ctx, key, WithIfMatch(v1)); !errors.Is(err, ErrPreconditionFailed) {
				t.Fatalf("Delete with a stale version: %v", err)
			}
			if err := c.Delete(ctx, key, WithIfMatch(v2), WithW(All)); err != nil {
				t.Fatal(err)
			}
			if _, err := c.Get(ctx, key, WithR(All)); !errors.Is(err, ErrNotFound) {
				t.Fatalf("Get after Delete: %v", err)
			}
			if err := c.Delete(ctx, key); err != nil {
				t.Fatalf("deleting an absent key: %v", err)
			}
			if _, err := c.CompareAndSwap(ctx, key, nil, []byte("again"), WithW(Replicas(2))); err != nil {
				t.Fatalf("create-only after Delete: %v", err)
			}
			// An empty value is a value.
			if _, err := c.Put(ctx, key, nil); err != nil {
				t.Fatal(err)
			}
			if got, err := c.Get(ctx, key); err != nil || got.Value == nil || len(got.Value) != 0 {
				t.Fatalf("empty value: %v %v", got.Value, err)
			}
		})
	}
}

func TestLiveErrors(t *testing.T) {
	ctx := context.Background()
	for name, c := range transports(t) {
		t.Run(name, func(t *testing.T) {
			key := testKey(t, "k")
			_, err := c.Put(ctx, key, []byte("v"), WithW(Replicas(5)))
			if !errors.Is(err, ErrInvalidRequest) {
				t.Fatalf("w=5 with 3 replicas: %v", err)
			}
			var e *Error
			_, err = c.Put(ctx, bytes.Repeat([]byte("k"), 5000), []byte("v"))
			if !errors.Is(err, ErrTooLarge) || !errors.As(err, &e) || e.Code != "key_too_long" {
				t.Fatalf("a 5000-byte key: %v", err)
			}
			if _, err = c.Get(ctx, []byte{}); !errors.Is(err, ErrInvalidRequest) {
				t.Fatalf("an empty key: %v", err)
			}
		})
	}
	_, err := NewNativeClient(ctx, useCluster(t).seeds(), WithCluster("another"))
	var h *HandshakeError
	if !errors.As(err, &h) || h.Code != "cluster_mismatch" {
		t.Fatalf("another cluster's name: %v", err)
	}
}

// Keys and values of every byte value, written through one transport and read
// through the others.
func TestLiveBinary(t *testing.T) {
	ctx := context.Background()
	all := make([]byte, 256)
	for i := range all {
		all[i] = byte(i)
	}
	clients := transports(t)
	names := []string{"native", "smart", "rest", "grpc"}
	for i, writer := range names {
		reader := names[(i+1)%len(names)]
		prefix := append(testKey(t, writer), 0)
		// One key holding every byte, and one key per byte value.
		items := []Item{{Key: append(slices.Clone(prefix), all...), Value: all}}
		for b := range 256 {
			items = append(items, Item{Key: append(slices.Clone(prefix), byte(b)), Value: []byte{byte(b), 0, 255}})
		}
		results, err := clients[writer].BatchPut(ctx, items)
		if err != nil {
			t.Fatalf("%s BatchPut: %v", writer, err)
		}
		keys := make([][]byte, len(items))
		for j, it := range items {
			keys[j] = it.Key
		}
		got, err := clients[reader].BatchGet(ctx, keys)
		if err != nil {
			t.Fatalf("%s BatchGet: %v", reader, err)
		}
		for j, r := range got {
			if !bytes.Equal(r.Key, items[j].Key) || !bytes.Equal(r.Value.Value, items[j].Value) || r.Version != results[j].Version {
				t.Fatalf("%s wrote, %s read key %x: %x (%s), want %x (%s)", writer, reader, items[j].Key,
					r.Value.Value, r.Version, items[j].Value, results[j].Version)
			}
		}
		// And the listing gives the keys back in byte order.
		var listed [][]byte
		for k, err := range clients["rest"].(*RESTClient).Scan(ctx, prefix, WithPageSize(100)) {
			if err != nil {
				t.Fatal(err)
			}
			listed = append(listed, k)
		}
		sort.Slice(keys, func(a, b int) bool { return bytes.Compare(keys[a], keys[b]) < 0 })
		if len(listed) != len(keys) {
			t.Fatalf("listed %d keys, want %d", len(listed), len(keys))
		}
		for j := range keys {
			if !bytes.Equal(listed[j], keys[j]) {
				t.Fatalf("listed key %d: %x, want %x", j, listed[j], keys[j])
			}
		}
	}
}

// A token read through one API is an If-Match for the other.
func TestLiveVersionsShared(t *testing.T) {
	ctx := context.Background()
	c := useCluster(t)
	native, rest := c.nativeClient(t), c.restClient(t, 0)
	key := testKey(t, "k")
	vRest, err := rest.Put(ctx, key, []byte("by rest"))
	if err != nil {
		t.Fatal(err)
	}
	got, err := native.Get(ctx, key)
	if err != nil || got.Version != vRest {
		t.Fatalf("native read %s %v, REST wrote %s", got.Version, err, vRest)
	}
	vNative, err := native.CompareAndSwap(ctx, key, &vRest, []byte("by native"))
	if err != nil {
		t.Fatalf("native CAS with the REST version: %v", err)
	}
	if _, err := rest.CompareAndSwap(ctx, key, &vRest, []byte("stale")); !errors.Is(err, ErrPreconditionFailed) {
		t.Fatalf("REST CAS with the replaced version: %v", err)
	}
	quoted := `"` + vNative + `"` // as copied from an ETag header
	if _, err := rest.Put(ctx, key, []byte("by rest again"), WithIfMatch(quoted)); err != nil {
		t.Fatalf("REST If-Match with the native version: %v", err)
	}
}

// A value with a TTL is there, then expires; one without stays.
func TestLiveTTL(t *testing.T) {
	ctx := context.Background()
	for name, c := range transports(t) {
		t.Run(name, func(t *testing.T) {
			key, keep := testKey(t, "ttl"), testKey(t, "keep")
			written := time.Now()
			if _, err := c.Put(ctx, key, []byte("v"), WithTTL(time.Second)); err != nil {
				t.Fatal(err)
			}
			if _, err := c.Put(ctx, keep, []byte("v")); err != nil {
				t.Fatal(err)
			}
			if _, err := c.Get(ctx, key); err != nil && time.Since(written) < 900*time.Millisecond {
				t.Fatalf("right after the Put: %v", err)
			}
			for {
				_, err := c.Get(ctx, key)
				if errors.Is(err, ErrNotFound) {
					break
				}
				if err != nil {
					t.Fatal(err)
				}
				if time.Since(written) > 10*time.Second {
					t.Fatal("the value did not expire")
				}
				time.Sleep(100 * time.Millisecond)
			}
			if since := time.Since(written); since < 900*time.Millisecond {
				t.Fatalf("expired after %v, before its 1 s TTL", since)
			}
			if _, err := c.Get(ctx, keep); err != nil {
				t.Fatalf("the value without a TTL: %v", err)
			}
		})
	}
}

func TestLiveBatch(t *testing.T) {
	ctx := context.Background()
	for name, c := range transports(t) {
		t.Run(name, func(t *testing.T) {
			prefix := testKey(t, "b")
			var items []Item
			var keys [][]byte
			for i := range 300 {
				k := append(slices.Clone(prefix), fmt.Sprintf("/%03d", i)...)
				items = append(items, Item{Key: k, Value: []byte(fmt.Sprint(i))})
				if i%2 == 0 {
					keys = append(keys, k)
				}
			}
			results, err := c.BatchPut(ctx, items, WithTTL(time.Hour))
			if err != nil {
				t.Fatal(err)
			}
			for i, r := range results {
				if r.Err != nil || r.Version == "" || !bytes.Equal(r.Key, items[i].Key) {
					t.Fatalf("item %d: %+v", i, r)
				}
			}
			missing := append(slices.Clone(prefix), "/missing"...)
			got, err := c.BatchGet(ctx, append(keys, missing))
			if err != nil {
				t.Fatal(err)
			}
			for i, r := range got[:len(keys)] {
				if r.Err != nil || string(r.Value.Value) != fmt.Sprint(2*i) || r.Version != results[2*i].Version {
					t.Fatalf("key %s: %+v", keys[i], r)
				}
			}
			if last := got[len(keys)]; !errors.Is(last.Err, ErrNotFound) {
				t.Fatalf("the missing key: %v", last.Err)
			}
			if _, err := c.BatchPut(ctx, items[:1], WithIfMatch("*")); !errors.Is(err, ErrInvalidRequest) {
				t.Fatalf("BatchPut with WithIfMatch: %v", err)
			}
		})
	}
}

// Paging through a listing a few keys at a time gives every key once, in order,
// through both transports.
func TestLiveScan(t *testing.T) {
	ctx := context.Background()
	c := useCluster(t)
	native, rest := c.nativeClient(t), c.restClient(t, 2)
	prefix := testKey(t, "s")
	var want [][]byte
	for i := range 23 {
		k := append(slices.Clone(prefix), fmt.Sprintf("/%02d+ %c", i, 'a'+i)...)
		want = append(want, k)
		if _, err := rest.Put(ctx, k, []byte("v")); err != nil {
			t.Fatal(err)
		}
	}
	// Deleted keys are not listed; the prefix's sibling is not either.
	gone := append(slices.Clone(prefix), "/gone"...)
	if _, err := native.Put(ctx, gone, []byte("v")); err != nil {
		t.Fatal(err)
	}
	if err := native.Delete(ctx, gone); err != nil {
		t.Fatal(err)
	}
	if _, err := native.Put(ctx, append(slices.Clone(prefix[:len(prefix)-1]), 'X'), []byte("v")); err != nil {
		t.Fatal(err)
	}
	for name, scan := range map[string]func() ([][]byte, error){
		"native": func() (out [][]byte, err error) {
			for k, err := range native.Scan(ctx, prefix, WithPageSize(5)) {
				if err != nil {
					return nil, err
				}
				out = append(out, k)
			}
			return out, nil
		},
		"rest": func() (out [][]byte, err error) {
			for k, err := range rest.Scan(ctx, prefix, WithPageSize(4)) {
				if err != nil {
					return nil, err
				}
				out = append(out, k)
			}
			return out, nil
		},
	} {
		got, err := scan()
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if len(got) != len(want) {
			t.Fatalf("%s: %d keys, want %d: %q", name, len(got), len(want), got)
		}
		for i := range want {
			if !bytes.Equal(got[i], want[i]) {
				t.Fatalf("%s: key %d is %q, want %q", name, i, got[i], want[i])
			}
		}
	}
	// One page at a time: the cursor goes on until "".
	page, err := rest.List(ctx, prefix, "", 10)
	if err != nil || len(page.Keys) > 10 || page.Cursor == "" {
		t.Fatalf("first page: %d keys, cursor %q, %v", len(page.Keys), page.Cursor, err)
	}
	// Breaking out of the loop stops the paging.
	n := 0
	for _, err := range native.Scan(ctx, prefix, WithPageSize(2)) {
		if err != nil {
			t.Fatal(err)
		}
		if n++; n == 3 {
			break
		}
	}
	if _, err := rest.List(ctx, prefix, "", 20000); !errors.Is(err, ErrInvalidRequest) {
		t.Fatalf("limit over 10,000: %v", err)
	}
}

func TestLiveMembersAndRing(t *testing.T) {
	ctx := context.Background()
	c := useCluster(t)
	for name, client := range transports(t) {
		t.Run(name, func(t *testing.T) {
			members, err := client.Members(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if len(members) != len(c.nodes) {
				t.Fatalf("%d members: %+v", len(members), members)
			}
			byID := map[string]Member{}
			for _, m := range members {
				byID[m.ID] = m
			}
			for _, n := range c.nodes {
				m := byID[n.id]
				if m.State != "alive" || m.NativeAddr() != n.nativeAddr() || m.RESTURL() != n.restURL() || m.GRPCAddr() != n.grpcAddr() || m.Weight != 1 {
					t.Fatalf("member %s: %+v", n.id, m)
				}
			}
			ring, err := client.Ring(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if ring.Partitions != 1024 || ring.Replicas != 3 || ring.Hash != "xxh64" || len(ring.Nodes) != 3 {
				t.Fatalf("ring %d partitions, %d replicas, %s, %v", ring.Partitions, ring.Replicas, ring.Hash, ring.Nodes)
			}
			for p, owners := range ring.Owners {
				if len(owners) != 3 || owners[0] == owners[1] || owners[1] == owners[2] || owners[0] == owners[2] {
					t.Fatalf("partition %d: %v", p, owners)
				}
			}
		})
	}
}

// frameCounter wraps the native connections a client opens and decodes the frames
// the client writes, to see where each key's requests actually went.
type frameCounter struct {
	mu     sync.Mutex
	byAddr map[string][][]byte // keys of Get/Put/Delete frames sent to each address
}

func (f *frameCounter) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	var d net.Dialer
	nc, err := d.DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	return &countingConn{Conn: nc, addr: addr, counter: f}, nil
}

type countingConn struct {
	net.Conn
	addr    string
	counter *frameCounter
	buf     []byte
}

func (c *countingConn) Write(b []byte) (int, error) {
	c.buf = append(c.buf, b...)
	for len(c.buf) >= 4 {
		n := int(c.buf[0])<<24 | int(c.buf[1])<<16 | int(c.buf[2])<<8 | int(c.buf[3])
		if len(c.buf) < 4+n {
			break
		}
		frame := &pb.Frame{}
		if err := proto.Unmarshal(c.buf[4:4+n], frame); err == nil {
			var key []byte
			switch body := frame.GetBody().(type) {
			case *pb.Frame_Get:
				key = body.Get.GetKey()
			case *pb.Frame_Put:
				key = body.Put.GetKey()
			case *pb.Frame_Delete:
				key = body.Delete.GetKey()
			}
			if key != nil {
				c.counter.mu.Lock()
				c.counter.byAddr[c.addr] = append(c.counter.byAddr[c.addr], key)
				c.counter.mu.Unlock()
			}
		}
		c.buf = c.buf[4+n:]
	}
	return c.Conn.Write(b)
}

// Smart routing sends each request to its key's first owner, and gives the same
// answers as a client that lets any node coordinate.
func TestLiveSmartRouting(t *testing.T) {
	ctx := context.Background()
	c := useCluster(t)
	counter := &frameCounter{byAddr: map[string][][]byte{}}
	smart := c.nativeClient(t, WithSmartRouting(), WithDialer(counter.dial))
	plain := c.nativeClient(t)
	rest := c.restClient(t, 0)
	ring, err := rest.Ring(ctx)
	if err != nil {
		t.Fatal(err)
	}
	addrOf := map[string]string{}
	for _, n := range c.nodes {
		addrOf[n.id] = n.nativeAddr()
	}

	prefix := testKey(t, "r")
	const count = 300
	want := map[string]int{}
	var items []Item
	for i := range count {
		k := append(slices.Clone(prefix), fmt.Sprintf("/%d", i)...)
		items = append(items, Item{Key: k, Value: []byte(fmt.Sprint(i))})
		want[addrOf[ring.OwnersOf(k)[0]]] += 3 // put, get, delete below
	}
	written, err := smart.BatchPut(ctx, items)
	if err != nil {
		t.Fatal(err)
	}
	keys := make([][]byte, len(items))
	for i, it := range items {
		keys[i] = it.Key
	}
	viaSmart, err := smart.BatchGet(ctx, keys)
	if err != nil {
		t.Fatal(err)
	}
	viaPlain, err := plain.BatchGet(ctx, keys)
	if err != nil {
		t.Fatal(err)
	}
	for i := range keys {
		if !bytes.Equal(viaSmart[i].Value.Value, items[i].Value) || viaSmart[i].Version != written[i].Version ||
			!bytes.Equal(viaPlain[i].Value.Value, viaSmart[i].Value.Value) || viaPlain[i].Version != viaSmart[i].Version {
			t.Fatalf("key %s: smart %+v, unrouted %+v, written %s", keys[i], viaSmart[i], viaPlain[i], written[i].Version)
		}
	}
	for i := range keys {
		if err := smart.Delete(ctx, keys[i], WithIfMatch(written[i].Version)); err != nil {
			t.Fatal(err)
		}
		if _, err := plain.Get(ctx, keys[i]); !errors.Is(err, ErrNotFound) {
			t.Fatalf("after a routed Delete, the unrouted Get: %v", err)
		}
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
	t.Logf("requests per node: %v", got)
	for _, n := range c.nodes {
		if got[n.nativeAddr()] != want[n.nativeAddr()] || got[n.nativeAddr()] == 0 {
			t.Fatalf("requests per node %v, want %v", got, want)
		}
	}
}
