package dhashmap

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"testing"
	"time"

	pb "github.com/dhashmap/dhashmap/clients/go/dhashmappb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// A version read over gRPC is an If-Match on REST and native, and back.
func TestLiveGRPCVersionsShared(t *testing.T) {
	ctx := context.Background()
	c := useCluster(t)
	g, native, rest := c.grpcClient(t, 0), c.nativeClient(t), c.restClient(t, 1)
	key := append(testKey(t, "k"), 0, 255)
	vGRPC, err := g.Put(ctx, key, []byte("by grpc"))
	if err != nil {
		t.Fatal(err)
	}
	vRest, err := rest.Put(ctx, key, []byte("by rest"), WithIfMatch(vGRPC))
	if err != nil {
		t.Fatalf("REST If-Match with the gRPC version: %v", err)
	}
	if got, err := g.Get(ctx, key); err != nil || got.Version != vRest || string(got.Value) != "by rest" {
		t.Fatalf("gRPC read %q %s %v, REST wrote %s", got.Value, got.Version, err, vRest)
	}
	vNative, err := native.CompareAndSwap(ctx, key, &vRest, []byte("by native"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := g.CompareAndSwap(ctx, key, &vRest, []byte("stale")); !errors.Is(err, ErrPreconditionFailed) {
		t.Fatalf("gRPC CAS with the replaced version: %v", err)
	}
	vGRPC2, err := g.Put(ctx, key, []byte("by grpc again"), WithIfMatch(`"`+vNative+`"`))
	if err != nil {
		t.Fatalf("gRPC If-Match with the native version: %v", err)
	}
	if err := native.Delete(ctx, key, WithIfMatch(vGRPC)); !errors.Is(err, ErrPreconditionFailed) {
		t.Fatalf("native Delete with a stale gRPC version: %v", err)
	}
	if err := native.Delete(ctx, key, WithIfMatch(vGRPC2)); err != nil {
		t.Fatalf("native Delete with the gRPC version: %v", err)
	}
	if _, err := g.Get(ctx, key, WithR(All)); !errors.Is(err, ErrNotFound) {
		t.Fatalf("gRPC Get after the delete: %v", err)
	}
	if _, err := g.Put(ctx, key, []byte("v"), WithIfNoneMatch()); err != nil {
		t.Fatalf("create only: %v", err)
	}
	if _, err := g.Put(ctx, key, []byte("v"), WithIfNoneMatch()); !errors.Is(err, ErrPreconditionFailed) {
		t.Fatalf("create only on a live key: %v", err)
	}
	if _, err := g.Put(ctx, key, []byte("v"), WithIfMatch("*")); !errors.Is(err, ErrInvalidRequest) {
		t.Fatalf(`WithIfMatch("*") over gRPC: %v`, err)
	}
}

// Scan over the stream, List pages with cursors shared with REST, an early break.
func TestLiveGRPCScan(t *testing.T) {
	ctx := context.Background()
	c := useCluster(t)
	g, rest := c.grpcClient(t, 1), c.restClient(t, 0)
	prefix := append(testKey(t, "s"), 0)
	var want [][]byte
	var items []Item
	for i := range 37 {
		k := append(slices.Clone(prefix), byte(i*7), 0xff, byte(i))
		want = append(want, k)
		items = append(items, Item{Key: k, Value: []byte("v")})
	}
	slices.SortFunc(want, bytes.Compare)
	if _, err := g.BatchPut(ctx, items); err != nil {
		t.Fatal(err)
	}
	for _, size := range []int{1, 5, 1000} {
		var got [][]byte
		for k, err := range g.Scan(ctx, prefix, WithPageSize(size)) {
			if err != nil {
				t.Fatalf("page size %d: %v", size, err)
			}
			got = append(got, k)
		}
		if !slices.EqualFunc(got, want, bytes.Equal) {
			t.Fatalf("page size %d: %d keys, want %d", size, len(got), len(want))
		}
	}
	// Pages of 10, alternating gRPC and REST: their cursors are the same.
	var paged [][]byte
	cursor := ""
	for i := 0; ; i++ {
		var page Page
		var err error
		if i%2 == 0 {
			page, err = g.List(ctx, prefix, cursor, 10)
		} else {
			page, err = rest.List(ctx, prefix, cursor, 10)
		}
		if err != nil || len(page.Keys) > 10 {
			t.Fatalf("page %d: %d keys, %v", i, len(page.Keys), err)
		}
		paged = append(paged, page.Keys...)
		if page.Cursor == "" {
			break
		}
		cursor = page.Cursor
		if i > 10 {
			t.Fatal("the paging does not end")
		}
	}
	if !slices.EqualFunc(paged, want, bytes.Equal) {
		t.Fatalf("paged %d keys, want %d", len(paged), len(want))
	}
	n := 0
	for _, err := range g.Scan(ctx, prefix, WithPageSize(2)) {
		if err != nil {
			t.Fatal(err)
		}
		if n++; n == 3 {
			break
		}
	}
	if _, err := g.List(ctx, prefix, "", 20000); !errors.Is(err, ErrInvalidRequest) {
		t.Fatalf("limit over 10,000: %v", err)
	}
	// The connection is still fine after the broken-off stream.
	if _, err := g.Get(ctx, want[0]); err != nil {
		t.Fatal(err)
	}
}

// A batch over MaxBatch is split into several calls.
func TestLiveGRPCLargeBatch(t *testing.T) {
	ctx := context.Background()
	g := useCluster(t).grpcClient(t, 0)
	prefix := testKey(t, "b")
	var items []Item
	var keys [][]byte
	for i := range MaxBatch + 5 {
		k := append(slices.Clone(prefix), fmt.Sprintf("/%04d", i)...)
		items = append(items, Item{Key: k, Value: []byte(fmt.Sprint(i))})
		keys = append(keys, k)
	}
	results, err := g.BatchPut(ctx, items, WithW(One))
	if err != nil || len(results) != len(items) {
		t.Fatalf("%d results, %v", len(results), err)
	}
	got, err := g.BatchGet(ctx, keys, WithR(All))
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range got {
		if r.Err != nil || string(r.Value.Value) != fmt.Sprint(i) || r.Version != results[i].Version {
			t.Fatalf("key %d: %+v", i, r)
		}
	}
}

// stubKV is an in-process gRPC server: Get never answers (until the call ends),
// Put fails with the status in putStatus.
type stubKV struct {
	pb.UnimplementedKVServer
	putStatus *status.Status
	trailer   metadata.MD
}

func (s *stubKV) Get(ctx context.Context, _ *pb.GetRequest) (*pb.GetResponse, error) {
	<-ctx.Done()
	return nil, ctx.Err()
}

func (s *stubKV) Put(ctx context.Context, _ *pb.PutRequest) (*pb.PutResponse, error) {
	if s.trailer != nil {
		grpc.SetTrailer(ctx, s.trailer)
	}
	return nil, s.putStatus.Err()
}

func (s *stubKV) Scan(_ *pb.ScanRequest, stream grpc.ServerStreamingServer[pb.ScanResponse]) error {
	if err := stream.Send(&pb.ScanResponse{Keys: [][]byte{[]byte("a")}}); err != nil {
		return err
	}
	<-stream.Context().Done()
	return nil
}

func startStub(t *testing.T, kv *stubKV) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	server := grpc.NewServer()
	pb.RegisterKVServer(server, kv)
	go server.Serve(l)
	t.Cleanup(server.Stop)
	return l.Addr().String()
}

func TestGRPCDeadline(t *testing.T) {
	addr := startStub(t, &stubKV{})
	ctx := context.Background()
	client, err := NewGRPCClient(ctx, addr, WithTimeout(300*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	start := time.Now()
	_, err = client.Get(ctx, []byte("k"))
	if !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > 3*time.Second {
		t.Fatalf("the client's timeout: %v after %v", err, time.Since(start))
	}
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	start = time.Now()
	_, err = client.Get(short, []byte("k"))
	if !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > 250*time.Millisecond {
		t.Fatalf("the ctx deadline: %v after %v", err, time.Since(start))
	}
	canceled, cancel2 := context.WithCancel(ctx)
	time.AfterFunc(50*time.Millisecond, cancel2)
	if _, err = client.Get(canceled, []byte("k")); !errors.Is(err, context.Canceled) {
		t.Fatalf("a canceled ctx: %v", err)
	}
	// A stream that stops sending: the timeout bounds the wait for each message.
	var keys []string
	for k, err := range client.Scan(ctx, []byte("")) {
		if err != nil {
			if !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("a stalled Scan: %v", err)
			}
			break
		}
		keys = append(keys, string(k))
	}
	if !slices.Equal(keys, []string{"a"}) {
		t.Fatalf("a stalled Scan gave %q", keys)
	}
}

func TestGRPCStatusMapping(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		code     codes.Code
		msg      string
		trailer  metadata.MD
		kind     error
		errCode  string
		acks     int
		required int
	}{
		{codes.NotFound, "no value", nil, ErrNotFound, "not_found", 0, 0},
		{codes.FailedPrecondition, "lost", nil, ErrPreconditionFailed, "precondition_failed", 0, 0},
		{codes.InvalidArgument, "the key is empty", nil, ErrInvalidRequest, "invalid_request", 0, 0},
		{codes.ResourceExhausted, "the key is 5000 bytes; the limit is 4096", nil, ErrTooLarge, "key_too_long", 0, 0},
		{codes.ResourceExhausted, "the value is 9 bytes; the limit is 8", nil, ErrTooLarge, "value_too_large", 0, 0},
		{codes.ResourceExhausted, "storage full", nil, ErrStorageFull, "storage_full", 0, 0},
		// A store whose path says "key" is still full; grpc's own size limit is a frame too large.
		{codes.ResourceExhausted, "the store at /srv/keystore/n1 is full (map size 1024 bytes); raise --lmdb-map-size", nil, ErrStorageFull, "storage_full", 0, 0},
		{codes.ResourceExhausted, "Received message larger than max (20971520 vs. 9502720)", nil, ErrTooLarge, "frame_too_large", 0, 0},
		{codes.Unavailable, "1 of 3 replicas answered", metadata.Pairs("acks", "1", "required", "3"), ErrUnavailable, "unavailable", 1, 3},
		{codes.Unavailable, "storage failed", nil, ErrUnavailable, "unavailable", 0, 0},
		{codes.PermissionDenied, "no", nil, ErrForbidden, "forbidden", 0, 0},
		{codes.DeadlineExceeded, "the deadline passed before the cluster answered", nil, context.DeadlineExceeded, "timeout", 0, 0},
		{codes.Internal, "see its log", nil, ErrServer, "internal", 0, 0},
	} {
		t.Run(tc.code.String()+"/"+tc.errCode, func(t *testing.T) {
			addr := startStub(t, &stubKV{putStatus: status.New(tc.code, tc.msg), trailer: tc.trailer})
			client, err := NewGRPCClient(ctx, addr)
			if err != nil {
				t.Fatal(err)
			}
			defer client.Close()
			_, err = client.Put(ctx, []byte("k"), []byte("v"))
			var e *Error
			if !errors.Is(err, tc.kind) || !errors.As(err, &e) || e.Code != tc.errCode || e.Message != tc.msg ||
				e.Acks != tc.acks || e.Required != tc.required || e.Node != addr {
				t.Fatalf("%v: %#v", err, e)
			}
		})
	}
}

func TestGRPCConnectionErrors(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close() // nothing listens there now
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := NewGRPCClient(ctx, addr); !errors.Is(err, ErrConnection) {
		t.Fatalf("nothing listening: %v", err)
	}
	stubAddr := startStub(t, &stubKV{putStatus: status.New(codes.OK, "")})
	client, err := NewGRPCClient(ctx, stubAddr)
	if err != nil {
		t.Fatal(err)
	}
	client.Close()
	if _, err := client.Get(ctx, []byte("k")); !errors.Is(err, ErrClosed) {
		t.Fatalf("after Close: %v", err)
	}
	if _, err := client.Get(ctx, []byte("k"), WithW(All)); !errors.Is(err, ErrInvalidRequest) {
		t.Fatalf("an option Get does not take: %v", err)
	}
}
