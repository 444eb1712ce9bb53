package dhashmap

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	pb "github.com/dhashmap/dhashmap/clients/go/dhashmappb"
)

// fakeNode is an in-process node on a loopback listener: it sends its Hello, reads
// the client's, then gives each frame to handle, which may answer at once, later,
// out of order, or close the connection.
type fakeNode struct {
	t        *testing.T
	ln       net.Listener
	cluster  string
	version  uint32
	handle   func(s *fakeSession, frame *pb.Frame)
	accepted atomic.Int32

	mu     sync.Mutex
	hellos []*pb.Hello
}

type fakeSession struct {
	node *fakeNode
	nc   net.Conn
	wmu  sync.Mutex
}

func (s *fakeSession) send(frame *pb.Frame) {
	data, err := encodeFrame(frame)
	if err != nil {
		s.node.t.Error(err)
		return
	}
	s.wmu.Lock()
	defer s.wmu.Unlock()
	_, _ = s.nc.Write(data)
}

func (s *fakeSession) answer(id uint64, body any) {
	frame := &pb.Frame{Id: id}
	switch b := body.(type) {
	case *pb.GetResult:
		frame.Body = &pb.Frame_GetResult{GetResult: b}
	case *pb.PutResult:
		frame.Body = &pb.Frame_PutResult{PutResult: b}
	case *pb.DeleteResult:
		frame.Body = &pb.Frame_DeleteResult{DeleteResult: b}
	case *pb.Error:
		frame.Body = &pb.Frame_Error{Error: b}
	case *pb.Ping:
		frame.Body = &pb.Frame_Ping{Ping: b}
	default:
		panic(fmt.Sprintf("no frame for %T", body))
	}
	s.send(frame)
}

func newFakeNode(t *testing.T, handle func(s *fakeSession, frame *pb.Frame)) *fakeNode {
	t.Helper()
	return newFakeNodeOf(t, DefaultCluster, protocolVersion, handle)
}

func newFakeNodeOf(t *testing.T, cluster string, version uint32, handle func(s *fakeSession, frame *pb.Frame)) *fakeNode {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	n := &fakeNode{t: t, ln: ln, cluster: cluster, version: version, handle: handle}
	t.Cleanup(func() { ln.Close() })
	go n.serve()
	return n
}

func (n *fakeNode) addr() string { return n.ln.Addr().String() }

func (n *fakeNode) serve() {
	for {
		nc, err := n.ln.Accept()
		if err != nil {
			return
		}
		n.accepted.Add(1)
		go n.session(nc)
	}
}

func (n *fakeNode) session(nc net.Conn) {
	defer nc.Close()
	s := &fakeSession{node: n, nc: nc}
	_, port, _ := net.SplitHostPort(n.addr())
	var peerPort uint32
	fmt.Sscan(port, &peerPort)
	s.send(&pb.Frame{Body: &pb.Frame_Hello{Hello: &pb.Hello{
		ProtocolVersion: n.version, Cluster: n.cluster, NodeId: "fake", Role: pb.Role_ROLE_PEER,
		Addresses: &pb.Addresses{Host: "127.0.0.1", PeerPort: peerPort, RestPort: 1}, Partitions: 1024,
	}}})
	r := bufio.NewReader(nc)
	first, err := readFrame(r, DefaultMaxFrame)
	if err != nil {
		return
	}
	n.mu.Lock()
	n.hellos = append(n.hellos, first.GetHello())
	n.mu.Unlock()
	for {
		frame, err := readFrame(r, DefaultMaxFrame)
		if err != nil {
			return
		}
		n.handle(s, frame)
	}
}

// echo answers Get with the key as the value, Put with a version, Delete with nothing.
func echo(s *fakeSession, frame *pb.Frame) {
	switch b := frame.GetBody().(type) {
	case *pb.Frame_Get:
		s.answer(frame.GetId(), &pb.GetResult{Found: true, Value: b.Get.GetKey(), Version: "v-" + string(b.Get.GetKey())})
	case *pb.Frame_Put:
		s.answer(frame.GetId(), &pb.PutResult{Version: "v1", Created: true})
	case *pb.Frame_Delete:
		s.answer(frame.GetId(), &pb.DeleteResult{})
	}
}

func fakeClient(t *testing.T, n *fakeNode, opts ...Option) *NativeClient {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := NewNativeClient(ctx, []string{n.addr()}, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestFakeHandshake(t *testing.T) {
	n := newFakeNode(t, echo)
	c := fakeClient(t, n)
	v, err := c.Get(context.Background(), []byte("k"))
	if err != nil || string(v.Value) != "k" || v.Version != "v-k" {
		t.Fatalf("Get: %v %v", v, err)
	}
	n.mu.Lock()
	hello := n.hellos[0]
	n.mu.Unlock()
	if hello.GetProtocolVersion() != protocolVersion || hello.GetCluster() != "dhashmap" || hello.GetRole() != pb.Role_ROLE_CLIENT ||
		hello.GetNodeId() != "" || hello.GetPartitions() != 0 {
		t.Fatalf("the client's Hello: %v", hello)
	}
}

func TestFakeHandshakeMismatch(t *testing.T) {
	for _, tc := range []struct {
		name    string
		cluster string
		version uint32
		code    string
	}{
		{"cluster", "another", protocolVersion, "cluster_mismatch"},
		{"version", "dhashmap", protocolVersion + 1, "version_mismatch"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := newFakeNodeOf(t, tc.cluster, tc.version, echo)
			_, err := NewNativeClient(context.Background(), []string{n.addr()}, WithTimeout(2*time.Second))
			var h *HandshakeError
			if !errors.As(err, &h) || h.Code != tc.code || h.Node != n.addr() {
				t.Fatalf("got %v, want HandshakeError %s", err, tc.code)
			}
		})
	}
}

// Requests are pipelined on one connection, and answers that come back in reverse
// order reach the right callers. The node answers nothing until all of them have
// arrived, so a client that waited for each answer before sending the next would
// time out.
func TestFakePipeliningOutOfOrder(t *testing.T) {
	const n = 50
	var mu sync.Mutex
	var held []*pb.Frame
	var ids = map[uint64]bool{}
	node := newFakeNode(t, func(s *fakeSession, frame *pb.Frame) {
		mu.Lock()
		defer mu.Unlock()
		if ids[frame.GetId()] {
			t.Errorf("id %d used twice", frame.GetId())
		}
		ids[frame.GetId()] = true
		held = append(held, frame)
		if len(held) == n {
			for i := len(held) - 1; i >= 0; i-- {
				echo(s, held[i])
			}
		}
	})
	c := fakeClient(t, node, WithPoolSize(1), WithTimeout(5*time.Second))
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			key := fmt.Sprintf("key-%d", i)
			v, err := c.Get(context.Background(), []byte(key))
			if err == nil && string(v.Value) != key {
				err = fmt.Errorf("%s got the answer for %s", key, v.Value)
			}
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if got := node.accepted.Load(); got != 1 {
		t.Fatalf("%d connections for one pooled connection", got)
	}
}

// Each Error code answering a request maps to the kind and code the Python client
// raises for it.
func TestFakeErrorMapping(t *testing.T) {
	cases := []struct {
		perr *pb.Error
		kind error
		code string
	}{
		{&pb.Error{Code: pb.ErrorCode_ERROR_CODE_NOT_FOUND}, ErrNotFound, "not_found"},
		{&pb.Error{Code: pb.ErrorCode_ERROR_CODE_PRECONDITION_FAILED, Message: "stale"}, ErrPreconditionFailed, "precondition_failed"},
		{&pb.Error{Code: pb.ErrorCode_ERROR_CODE_INVALID_REQUEST}, ErrInvalidRequest, "invalid_request"},
		{&pb.Error{Code: pb.ErrorCode_ERROR_CODE_UNAVAILABLE, Acks: 1, Required: 2}, ErrUnavailable, "unavailable"},
		{&pb.Error{Code: pb.ErrorCode_ERROR_CODE_BUSY}, ErrUnavailable, "busy"},
		{&pb.Error{Code: pb.ErrorCode_ERROR_CODE_STORAGE}, ErrUnavailable, "storage_error"},
		{&pb.Error{Code: pb.ErrorCode_ERROR_CODE_FORBIDDEN}, ErrForbidden, "forbidden"},
		{&pb.Error{Code: pb.ErrorCode_ERROR_CODE_TIMEOUT}, context.DeadlineExceeded, "timeout"},
		{&pb.Error{Code: pb.ErrorCode_ERROR_CODE_TOO_LARGE, Message: "key must be 1 to 4096 bytes"}, ErrTooLarge, "key_too_long"},
		{&pb.Error{Code: pb.ErrorCode_ERROR_CODE_TOO_LARGE, Message: "value is over 8388608 bytes"}, ErrTooLarge, "value_too_large"},
		{&pb.Error{Code: pb.ErrorCode_ERROR_CODE_INTERNAL}, ErrServer, "internal"},
		{&pb.Error{Code: pb.ErrorCode(99)}, ErrServer, "error_code_99"},
	}
	node := newFakeNode(t, func(s *fakeSession, frame *pb.Frame) {
		var i int
		fmt.Sscan(string(frame.GetGet().GetKey()), &i)
		s.answer(frame.GetId(), cases[i].perr)
	})
	c := fakeClient(t, node, WithPoolSize(1))
	for i, tc := range cases {
		_, err := c.Get(context.Background(), []byte(fmt.Sprint(i)))
		var e *Error
		if !errors.Is(err, tc.kind) || !errors.As(err, &e) || e.Code != tc.code || e.Node != node.addr() {
			t.Errorf("%v: got %#v, want %v (%s)", tc.perr, err, tc.kind, tc.code)
			continue
		}
		if tc.perr.Required > 0 && (e.Acks != 1 || e.Required != 2) {
			t.Errorf("UNAVAILABLE: acks %d required %d", e.Acks, e.Required)
		}
	}
	// The connection survived every error answer.
	if got := node.accepted.Load(); got != 1 {
		t.Fatalf("%d connections", got)
	}
}

// An Error with id 0 closes the connection: for TOO_LARGE the largest pending
// request fails with ErrTooLarge and the others with ErrConnection.
func TestFakeConnectionErrorFrame(t *testing.T) {
	var mu sync.Mutex
	seen := 0
	node := newFakeNode(t, func(s *fakeSession, frame *pb.Frame) {
		mu.Lock()
		defer mu.Unlock()
		if seen++; seen == 2 {
			s.answer(0, &pb.Error{Code: pb.ErrorCode_ERROR_CODE_TOO_LARGE, Message: "frame of N bytes is over the limit of M"})
			s.nc.Close()
		}
	})
	c := fakeClient(t, node, WithPoolSize(1))
	errs := make(chan error, 2)
	go func() { _, err := c.Put(context.Background(), []byte("small"), []byte("x")); errs <- err }()
	// The big one goes second, so it is not the first frame the node saw.
	for {
		mu.Lock()
		s := seen
		mu.Unlock()
		if s == 1 {
			break
		}
		time.Sleep(time.Millisecond)
	}
	_, bigErr := c.Put(context.Background(), []byte("big"), make([]byte, 1<<16))
	smallErr := <-errs
	var e *Error
	if !errors.Is(bigErr, ErrTooLarge) || !errors.As(bigErr, &e) || e.Code != "frame_too_large" {
		t.Fatalf("the large request: %v", bigErr)
	}
	if !errors.Is(smallErr, ErrConnection) || errors.Is(smallErr, ErrTooLarge) {
		t.Fatalf("the other request: %v", smallErr)
	}
}

// A node that does not answer: the request fails with context.DeadlineExceeded at
// its deadline, the late answer is dropped, and the connection keeps serving.
func TestFakeDeadlineExceeded(t *testing.T) {
	late := make(chan uint64, 1)
	node := newFakeNode(t, func(s *fakeSession, frame *pb.Frame) {
		if string(frame.GetGet().GetKey()) == "slow" {
			late <- frame.GetId()
			return
		}
		echo(s, frame)
	})
	c := fakeClient(t, node, WithPoolSize(1))
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	started := time.Now()
	_, err := c.Get(ctx, []byte("slow"))
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("got %v, want context.DeadlineExceeded", err)
	}
	if elapsed := time.Since(started); elapsed > 2*time.Second {
		t.Fatalf("the deadline was 100 ms; the call took %v", elapsed)
	}
	// The answer arrives after its caller gave up, then the connection is used again.
	id := <-late
	c.mu.Lock()
	conn := c.pools[node.addr()].liveConn()
	c.mu.Unlock()
	if conn == nil {
		t.Fatal("the connection broke at a client timeout")
	}
	v, err := c.Get(context.Background(), []byte("fast"))
	if err != nil || string(v.Value) != "fast" {
		t.Fatalf("after the timeout: %v %v", v, err)
	}
	if id == 0 || node.accepted.Load() != 1 {
		t.Fatalf("id %d, %d connections", id, node.accepted.Load())
	}

	// The client's own timeout is the same kind of error.
	c2 := fakeClient(t, node, WithTimeout(50*time.Millisecond))
	if _, err := c2.Get(context.Background(), []byte("slow")); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("client timeout: %v", err)
	}
	<-late
}

func TestFakeCanceled(t *testing.T) {
	node := newFakeNode(t, func(s *fakeSession, frame *pb.Frame) {})
	c := fakeClient(t, node)
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(20*time.Millisecond, cancel)
	if _, err := c.Get(ctx, []byte("k")); !errors.Is(err, context.Canceled) {
		t.Fatalf("got %v", err)
	}
}

// A late answer for a forgotten id is dropped; an answer for the id of a live
// request still reaches it.
func TestFakeLateAnswerDropped(t *testing.T) {
	var sess atomic.Pointer[fakeSession]
	node := newFakeNode(t, func(s *fakeSession, frame *pb.Frame) {
		sess.Store(s)
		if frame.GetId() > 1 {
			// First the answer to request 1, long forgotten, then this one's.
			s.answer(1, &pb.GetResult{Found: true, Value: []byte("stale")})
			echo(s, frame)
		}
	})
	c := fakeClient(t, node, WithPoolSize(1))
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := c.Get(ctx, []byte("first")); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("first: %v", err)
	}
	v, err := c.Get(context.Background(), []byte("second"))
	if err != nil || string(v.Value) != "second" {
		t.Fatalf("second: %v %v", v, err)
	}
}

// The node may ping the client; the client answers with a Pong echoing sent_at_ms.
func TestFakeNodePingsClient(t *testing.T) {
	pongs := make(chan *pb.Frame, 1)
	node := newFakeNode(t, func(s *fakeSession, frame *pb.Frame) {
		if frame.GetPong() != nil {
			pongs <- frame
			return
		}
		s.answer(frame.GetId()+1000, &pb.Ping{SentAtMs: 1234})
		echo(s, frame)
	})
	c := fakeClient(t, node)
	if _, err := c.Get(context.Background(), []byte("k")); err != nil {
		t.Fatal(err)
	}
	select {
	case pong := <-pongs:
		if pong.GetPong().GetSentAtMs() != 1234 || pong.GetId() < 1000 {
			t.Fatalf("pong %v", pong)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no Pong")
	}
}

// A connection the node closed is replaced: the next request works.
func TestFakeReconnect(t *testing.T) {
	var closing atomic.Bool
	node := newFakeNode(t, func(s *fakeSession, frame *pb.Frame) {
		if closing.CompareAndSwap(true, false) {
			s.nc.Close()
			return
		}
		echo(s, frame)
	})
	c := fakeClient(t, node, WithPoolSize(1))
	if _, err := c.Get(context.Background(), []byte("a")); err != nil {
		t.Fatal(err)
	}
	closing.Store(true)
	// This request went out and the connection closed: it may have been applied,
	// so it fails rather than being sent again.
	if _, err := c.Put(context.Background(), []byte("b"), []byte("v")); !errors.Is(err, ErrConnection) {
		t.Fatalf("request on the closed connection: %v", err)
	}
	v, err := c.Get(context.Background(), []byte("c"))
	if err != nil || string(v.Value) != "c" {
		t.Fatalf("after reconnecting: %v %v", v, err)
	}
	if got := node.accepted.Load(); got != 2 {
		t.Fatalf("%d connections, want 2", got)
	}
}

// A node that is down is not dialed for every request: after a failed dial the
// client backs off and fails at once, then reconnects when the node is back.
func TestFakeBackoff(t *testing.T) {
	node := newFakeNode(t, echo)
	addr := node.addr()
	c := fakeClient(t, node, WithPoolSize(1), WithBackoff(300*time.Millisecond, time.Second))
	node.ln.Close()
	c.mu.Lock()
	c.pools[addr].liveConn().nc.Close() // the node "restarts"
	c.mu.Unlock()
	deadline := time.Now().Add(5 * time.Second)
	var err error
	for time.Now().Before(deadline) {
		if _, err = c.Get(context.Background(), []byte("k")); err != nil {
			break
		}
	}
	if !errors.Is(err, ErrConnection) {
		t.Fatalf("with the node down: %v", err)
	}
	started := time.Now()
	if _, err := c.Get(context.Background(), []byte("k")); !errors.Is(err, ErrConnection) || time.Since(started) > 100*time.Millisecond {
		t.Fatalf("while backing off: %v after %v", err, time.Since(started))
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Skipf("cannot listen on %s again: %v", addr, err)
	}
	node.ln = ln
	go node.serve()
	t.Cleanup(func() { ln.Close() })
	for {
		v, err := c.Get(context.Background(), []byte("back"))
		if err == nil && string(v.Value) == "back" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no reconnect: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestFakeClosedClient(t *testing.T) {
	node := newFakeNode(t, func(s *fakeSession, frame *pb.Frame) {})
	c := fakeClient(t, node)
	errs := make(chan error, 1)
	go func() { _, err := c.Get(context.Background(), []byte("k")); errs <- err }()
	time.Sleep(50 * time.Millisecond)
	c.Close()
	if err := <-errs; !errors.Is(err, ErrConnection) {
		t.Fatalf("pending at Close: %v", err)
	}
	if _, err := c.Get(context.Background(), []byte("k")); !errors.Is(err, ErrClosed) {
		t.Fatalf("after Close: %v", err)
	}
}

// Options an operation does not take, and values the node would misread, are
// refused before anything is sent.
func TestCallOptionsRefused(t *testing.T) {
	node := newFakeNode(t, func(s *fakeSession, frame *pb.Frame) {
		t.Errorf("sent %v", frame)
		echo(s, frame)
	})
	c := fakeClient(t, node)
	ctx := context.Background()
	for name, err := range map[string]error{
		"ttl on get":     func() error { _, err := c.Get(ctx, []byte("k"), WithTTL(time.Minute)); return err }(),
		"ttl 0":          func() error { _, err := c.Put(ctx, []byte("k"), nil, WithTTL(0)); return err }(),
		"ttl fraction":   func() error { _, err := c.Put(ctx, []byte("k"), nil, WithTTL(1500*time.Millisecond)); return err }(),
		"ttl too long":   func() error { _, err := c.Put(ctx, []byte("k"), nil, WithTTL(MaxTTL+time.Second)); return err }(),
		"w 0":            func() error { _, err := c.Put(ctx, []byte("k"), nil, WithW(Replicas(0))); return err }(),
		"empty if-match": func() error { return c.Delete(ctx, []byte("k"), WithIfMatch("")) }(),
		"bad token":      func() error { return c.Delete(ctx, []byte("k"), WithIfMatch("a b")) }(),
		"cas empty":      func() error { v := ""; _, err := c.CompareAndSwap(ctx, []byte("k"), &v, nil); return err }(),
	} {
		if !errors.Is(err, ErrInvalidRequest) {
			t.Errorf("%s: %v", name, err)
		}
	}
}

// What the client puts on the wire for the options it takes.
func TestFakeRequestFields(t *testing.T) {
	got := make(chan *pb.Frame, 4)
	node := newFakeNode(t, func(s *fakeSession, frame *pb.Frame) {
		got <- frame
		echo(s, frame)
	})
	c := fakeClient(t, node)
	ctx := context.Background()
	if _, err := c.Put(ctx, []byte("k"), []byte("v"), WithTTL(90*time.Second), WithW(All), WithIfMatch(`"tok"`)); err != nil {
		t.Fatal(err)
	}
	put := (<-got).GetPut()
	if put.GetTtlSeconds() != 90 || put.GetW().GetLevel() != pb.Consistency_LEVEL_ALL || put.GetIfMatch() != "tok" || put.GetIfNoneMatch() {
		t.Fatalf("Put %v", put)
	}
	if _, err := c.CompareAndSwap(ctx, []byte("k"), nil, []byte("v"), WithW(Replicas(2))); err != nil {
		t.Fatal(err)
	}
	put = (<-got).GetPut()
	if !put.GetIfNoneMatch() || put.GetIfMatch() != "" || put.GetW().GetCount() != 2 || put.GetTtlSeconds() != 0 {
		t.Fatalf("create-only %v", put)
	}
	if _, err := c.Get(ctx, []byte("k"), WithR(One)); err != nil {
		t.Fatal(err)
	}
	if get := (<-got).GetGet(); get.GetR().GetLevel() != pb.Consistency_LEVEL_ONE {
		t.Fatalf("Get %v", get)
	}
	if err := c.Delete(ctx, []byte("k"), WithIfMatch("*")); err != nil {
		t.Fatal(err)
	}
	if del := (<-got).GetDelete(); del.GetIfMatch() != "*" || del.GetW() != nil {
		t.Fatalf("Delete %v", del)
	}
}
