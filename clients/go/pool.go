package dhashmap

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"
)

// nodePool keeps a few pipelined connections to one node's native port, opening
// them on first use and again after they break. After a failed dial the node is
// left alone for a backoff period (doubling from backoffMin up to backoffMax, with
// jitter): requests meanwhile fail at once with the last error instead of piling
// up on a node that is down, so the client can try another.
type nodePool struct {
	addr string
	cfg  *config
	next atomic.Uint64

	mu       sync.Mutex
	slots    []*conn
	dialing  []chan struct{} // per slot: closed when the dial in progress ends
	closed   bool
	failures int
	retryAt  time.Time
	lastErr  error
}

func newNodePool(addr string, cfg *config) *nodePool {
	return &nodePool{addr: addr, cfg: cfg, slots: make([]*conn, cfg.poolSize), dialing: make([]chan struct{}, cfg.poolSize)}
}

// backingOff: the node failed to connect recently; the error to fail with, or nil.
func (p *nodePool) backingOff() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.lastErr != nil && time.Now().Before(p.retryAt) {
		return p.lastErr
	}
	return nil
}

// get returns a live connection, dialing one when its slot has none. Connections
// are taken in turn, so requests spread over the pool.
func (p *nodePool) get(ctx context.Context) (*conn, error) {
	i := int(p.next.Add(1) % uint64(len(p.slots)))
	for {
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			return nil, &Error{Kind: ErrClosed, Code: "closed", Message: "the client is closed", Node: p.addr}
		}
		if c := p.slots[i]; c != nil && !c.isBroken() {
			p.mu.Unlock()
			return c, nil
		}
		if ch := p.dialing[i]; ch != nil {
			p.mu.Unlock()
			select {
			case <-ch:
				p.mu.Lock()
				c, err := p.slots[i], p.lastErr
				p.mu.Unlock()
				if c != nil && !c.isBroken() {
					return c, nil
				}
				if err != nil {
					return nil, err
				}
				continue
			case <-ctx.Done():
				return nil, contextError(ctx, "connecting to "+p.addr)
			}
		}
		if p.lastErr != nil && time.Now().Before(p.retryAt) {
			err := p.lastErr
			p.mu.Unlock()
			return nil, err
		}
		ch := make(chan struct{})
		p.dialing[i] = ch
		p.mu.Unlock()
		// The dial is not the caller's: it goes on if the caller gives up, for the
		// requests that come next.
		go p.dial(i, ch)
	}
}

func (p *nodePool) dial(i int, done chan struct{}) {
	timeout := p.cfg.timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	c, err := dialConn(ctx, p.cfg, p.addr)
	p.mu.Lock()
	defer func() {
		p.dialing[i] = nil
		p.mu.Unlock()
		close(done)
	}()
	if p.closed {
		if c != nil {
			go c.close()
		}
		return
	}
	if err != nil {
		p.failures++
		backoff := p.cfg.backoffMin << min(p.failures-1, 20)
		if backoff > p.cfg.backoffMax || backoff <= 0 {
			backoff = p.cfg.backoffMax
		}
		backoff = backoff/2 + rand.N(backoff/2+1) // jitter: nodes coming back are not stormed
		p.retryAt = time.Now().Add(backoff)
		var timeoutErr *Error
		if errors.As(err, &timeoutErr) && timeoutErr.Code == "timeout" {
			err = &Error{Kind: ErrConnection, Code: "connection_error", Node: p.addr,
				Message: fmt.Sprintf("cannot connect: no handshake within %v", timeout)}
		}
		p.lastErr = err
		return
	}
	p.failures, p.lastErr = 0, nil
	p.slots[i] = c
}

// liveConn is a live connection of this pool, or nil.
func (p *nodePool) liveConn() *conn {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.slots {
		if c != nil && !c.isBroken() {
			return c
		}
	}
	return nil
}

func (p *nodePool) close() {
	p.mu.Lock()
	p.closed = true
	slots := append([]*conn(nil), p.slots...)
	p.mu.Unlock()
	for _, c := range slots {
		if c != nil {
			c.close()
		}
	}
}
