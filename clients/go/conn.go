package dhashmap

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	pb "github.com/dhashmap/dhashmap/clients/go/dhashmappb"
)

// conn is one handshaken native connection. Requests are pipelined: each gets a
// fresh id, a writer goroutine sends the frames (several per write when they queue
// up) and a reader goroutine matches the answers to their requests by id, in
// whatever order they come. Once broken (the node closed it, a write failed, a
// frame could not be read) it stays broken: every pending request fails, and the
// pool opens a new connection for the next one.
type conn struct {
	addr         string
	nc           net.Conn
	hello        *pb.Hello
	maxFrame     int
	writeTimeout time.Duration

	sendq  chan *call
	broken chan struct{} // closed by fail

	mu      sync.Mutex // guards the fields below, and call.sent
	pending map[uint64]*call
	nextID  uint64
	err     error
}

type call struct {
	id        uint64
	data      []byte
	size      int
	done      chan result // buffered: the one answer never blocks its sender
	sent      bool        // some of it may be on the wire: not safe to send again
	abandoned atomic.Bool // the caller gave up before it was sent: do not send it
	reply     bool        // an answer to the node's request, not ours: nobody waits
}

type result struct {
	frame *pb.Frame
	err   error
}

// notSentError: the request failed before any of it was written, so sending it
// again (on another connection) cannot apply it twice.
type notSentError struct{ err error }

func (e *notSentError) Error() string { return e.err.Error() }
func (e *notSentError) Unwrap() error { return e.err }

// dialConn connects to addr and does the handshake within ctx.
func dialConn(ctx context.Context, cfg *config, addr string) (*conn, error) {
	nc, err := cfg.dial(ctx, "tcp", addr)
	if err != nil {
		if ctx.Err() != nil {
			return nil, contextError(ctx, "connecting to "+addr)
		}
		return nil, &Error{Kind: ErrConnection, Code: "connection_error", Node: addr,
			Message: fmt.Sprintf("cannot connect: %v", err)}
	}
	if deadline, ok := ctx.Deadline(); ok {
		_ = nc.SetDeadline(deadline)
	}
	// Stop the handshake's blocking reads and writes when ctx ends without a deadline.
	stop := context.AfterFunc(ctx, func() { _ = nc.SetDeadline(time.Unix(1, 0)) })
	hello, br, err := handshake(nc, cfg)
	if !stop() || err != nil {
		nc.Close()
		if err == nil || ctx.Err() != nil {
			return nil, contextError(ctx, "the handshake with "+addr)
		}
		return nil, withNode(err, addr)
	}
	_ = nc.SetDeadline(time.Time{})
	c := &conn{
		addr:         addr,
		nc:           nc,
		hello:        hello,
		maxFrame:     cfg.maxFrame,
		writeTimeout: cfg.timeout,
		sendq:        make(chan *call, 128),
		broken:       make(chan struct{}),
		pending:      make(map[uint64]*call),
	}
	go c.readLoop(br)
	go c.writeLoop()
	return c, nil
}

// handshake sends the client's Hello and waits for the node's. Waiting costs one
// round trip per connection, and a refused client then never fails a request halfway.
func handshake(nc net.Conn, cfg *config) (*pb.Hello, *bufio.Reader, error) {
	data, err := encodeFrame(clientHello(cfg.cluster, cfg.softwareVersion))
	if err != nil {
		return nil, nil, err
	}
	if _, err := nc.Write(data); err != nil {
		return nil, nil, &Error{Kind: ErrConnection, Code: "connection_error",
			Message: fmt.Sprintf("sending the Hello failed: %v", err)}
	}
	br := bufio.NewReaderSize(nc, 64<<10)
	frame, err := readFrame(br, cfg.maxFrame)
	if err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			err = &Error{Kind: ErrConnection, Code: "connection_error", Message: "the node closed the connection before its Hello"}
		} else if _, ok := err.(*Error); !ok {
			err = &Error{Kind: ErrConnection, Code: "connection_error", Message: fmt.Sprintf("reading the Hello failed: %v", err)}
		}
		return nil, nil, err
	}
	hello, err := checkHello(frame, cfg.cluster)
	return hello, br, err
}

// roundTrip sends frame (its id is set here) and waits for its answer or ctx.
func (c *conn) roundTrip(ctx context.Context, frame *pb.Frame) (*pb.Frame, error) {
	c.mu.Lock()
	if c.err != nil {
		err := c.err
		c.mu.Unlock()
		return nil, &notSentError{err}
	}
	c.nextID++
	frame.Id = c.nextID
	data, err := encodeFrame(frame)
	if err != nil {
		c.mu.Unlock()
		return nil, &Error{Kind: ErrInvalidRequest, Code: "invalid_request", Message: err.Error()}
	}
	cl := &call{id: frame.Id, data: data, size: len(data), done: make(chan result, 1)}
	c.pending[cl.id] = cl
	c.mu.Unlock()

	select {
	case c.sendq <- cl:
	case r := <-cl.done: // the connection broke while we queued
		return r.frame, r.err
	case <-ctx.Done():
		cl.abandoned.Store(true)
		c.forget(cl.id)
		return nil, contextError(ctx, "waiting to send to "+c.addr)
	}
	select {
	case r := <-cl.done:
		return r.frame, r.err
	case <-ctx.Done():
		// A late answer will find no pending request and be dropped.
		cl.abandoned.Store(true)
		c.forget(cl.id)
		return nil, contextError(ctx, "no answer from "+c.addr)
	}
}

func (c *conn) forget(id uint64) {
	c.mu.Lock()
	delete(c.pending, id)
	c.mu.Unlock()
}

func (c *conn) isBroken() bool {
	select {
	case <-c.broken:
		return true
	default:
		return false
	}
}

// inFlight is how many requests wait for an answer on this connection.
func (c *conn) inFlight() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.pending)
}

func (c *conn) close() {
	c.fail(&Error{Kind: ErrConnection, Code: "connection_error", Node: c.addr,
		Message: "the client closed the connection"}, 0)
}

// fail breaks the connection: every pending request fails with err, except that
// culprit (the request whose frame was over the node's limit), when not 0, gets
// err and the others a plain connection error.
func (c *conn) fail(err error, culprit uint64) {
	err = withNode(err, c.addr)
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return
	}
	c.err = err
	if culprit != 0 {
		c.err = &Error{Kind: ErrConnection, Code: "connection_error", Node: c.addr, Message: errorMessage(err)}
	}
	pending := c.pending
	c.pending = make(map[uint64]*call)
	c.mu.Unlock()
	close(c.broken)
	_ = c.nc.Close()
	for id, cl := range pending {
		e := c.err
		if id == culprit {
			e = err
		}
		if !cl.sent {
			e = &notSentError{e}
		}
		cl.done <- result{err: e}
	}
}

func errorMessage(err error) string {
	if e, ok := err.(*Error); ok {
		return e.Message
	}
	return err.Error()
}

func (c *conn) writeLoop() {
	const flushAt = 256 << 10
	buf := make([]byte, 0, 64<<10)
	batch := make([]*call, 0, 64)
	for {
		var first *call
		select {
		case first = <-c.sendq:
		case <-c.broken:
			return
		}
		buf, batch = buf[:0], batch[:0]
		add := func(cl *call) {
			if !cl.abandoned.Load() {
				buf = append(buf, cl.data...)
				batch = append(batch, cl)
			}
		}
		add(first)
	drain: // frames queued meanwhile go out in the same write
		for len(buf) < flushAt {
			select {
			case cl := <-c.sendq:
				add(cl)
			default:
				break drain
			}
		}
		if len(batch) == 0 {
			continue
		}
		c.mu.Lock()
		if c.err != nil {
			c.mu.Unlock()
			return // fail has answered them all, as not sent
		}
		for _, cl := range batch {
			cl.sent = true
		}
		c.mu.Unlock()
		if c.writeTimeout > 0 {
			_ = c.nc.SetWriteDeadline(time.Now().Add(c.writeTimeout))
		}
		if _, err := c.nc.Write(buf); err != nil {
			c.fail(&Error{Kind: ErrConnection, Code: "connection_error",
				Message: fmt.Sprintf("sending to the node failed: %v", err)}, 0)
			return
		}
		for _, cl := range batch {
			cl.data = nil
		}
		if cap(buf) > 1<<20 {
			buf = make([]byte, 0, 64<<10) // do not keep a large value's buffer around
		}
	}
}

func (c *conn) readLoop(br *bufio.Reader) {
	for {
		frame, err := readFrame(br, c.maxFrame)
		if err != nil {
			c.fail(readError(err), 0)
			return
		}
		if reply := notServed(frame); reply != nil {
			// A request from the node (a Ping). Never block here: a writer stuck on a
			// full socket would wait for us to read, and we for it.
			if data, err := encodeFrame(reply); err == nil {
				select {
				case c.sendq <- &call{data: data, reply: true}:
				default:
				}
			}
			continue
		}
		if frame.GetId() == 0 {
			if perr := frame.GetError(); perr != nil { // the node is closing, and says why
				err := connectionError(perr)
				var culprit uint64
				if perr.GetCode() == pb.ErrorCode_ERROR_CODE_TOO_LARGE {
					culprit = c.largestPending()
				}
				c.fail(err, culprit)
				return
			}
			continue
		}
		c.mu.Lock()
		cl := c.pending[frame.GetId()]
		delete(c.pending, frame.GetId())
		c.mu.Unlock()
		if cl != nil { // else: an answer after its caller gave up; drop it
			cl.done <- result{frame: frame}
		}
	}
}

func readError(err error) error {
	if _, ok := err.(*Error); ok {
		return err
	}
	if errors.Is(err, io.EOF) {
		return &Error{Kind: ErrConnection, Code: "connection_error", Message: "the node closed the connection"}
	}
	if errors.Is(err, net.ErrClosed) || errors.Is(err, os.ErrDeadlineExceeded) {
		return &Error{Kind: ErrConnection, Code: "connection_error", Message: "the connection was closed"}
	}
	return &Error{Kind: ErrConnection, Code: "connection_error", Message: fmt.Sprintf("the connection to the node broke: %v", err)}
}

func (c *conn) largestPending() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	var id uint64
	size := -1
	for i, cl := range c.pending {
		if cl.sent && cl.size > size {
			id, size = i, cl.size
		}
	}
	return id
}
