package dhashmap

import (
	"context"
	"slices"
	"sync"
	"time"
)

// router is smart routing's view of the cluster: the partition table from
// /v1/cluster/ring and the members' addresses and states from
// /v1/cluster/members, reloaded every refresh interval and soon after a
// connection error (a node went down, or the membership changed).
type router struct {
	c *NativeClient

	mu      sync.RWMutex
	ring    *Ring
	members map[string]Member

	kicks    chan struct{}
	done     chan struct{}
	stopOnce sync.Once
}

// minRefreshGap keeps connection errors from turning into a storm of reloads.
const minRefreshGap = time.Second

func newRouter(c *NativeClient) *router {
	return &router{c: c, kicks: make(chan struct{}, 1), done: make(chan struct{})}
}

// route: the native addresses of key's live owners in preference-list order, then
// the seeds as fallbacks; nil before the table is loaded.
func (r *router) route(key []byte) []string {
	r.mu.RLock()
	ring, members := r.ring, r.members
	r.mu.RUnlock()
	if ring == nil {
		return nil
	}
	var out []string
	for _, id := range ring.OwnersOf(key) {
		if m, ok := members[id]; ok && m.Live() && m.PeerPort > 0 {
			out = append(out, m.NativeAddr())
		}
	}
	for _, s := range r.c.seeds {
		if !slices.Contains(out, s) {
			out = append(out, s)
		}
	}
	return out
}

func (r *router) liveMembers() []Member {
	r.mu.RLock()
	defer r.mu.RUnlock()
	var out []Member
	for _, m := range r.members {
		if m.Live() {
			out = append(out, m)
		}
	}
	return out
}

// refresh loads the ring and the members from the first node that answers both.
func (r *router) refresh(ctx context.Context) error {
	return r.c.withREST(ctx, func(base string) error {
		ring, err := fetchRing(ctx, r.c.http, r.c.cfg.timeout, base)
		if err != nil {
			return err
		}
		list, err := fetchMembers(ctx, r.c.http, r.c.cfg.timeout, base)
		if err != nil {
			return err
		}
		members := make(map[string]Member, len(list))
		for _, m := range list {
			members[m.ID] = m
		}
		r.mu.Lock()
		r.ring, r.members = ring, members
		r.mu.Unlock()
		return nil
	})
}

// kick asks for a reload soon.
func (r *router) kick() {
	select {
	case r.kicks <- struct{}{}:
	default:
	}
}

func (r *router) run() {
	ticker := time.NewTicker(r.c.cfg.refresh)
	defer ticker.Stop()
	var last time.Time
	for {
		select {
		case <-r.done:
			return
		case <-ticker.C:
		case <-r.kicks:
			if wait := minRefreshGap - time.Since(last); wait > 0 {
				select {
				case <-time.After(wait):
				case <-r.done:
					return
				}
			}
		}
		last = time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), r.refreshTimeout())
		// A failed reload keeps the table it had: routing to a stale owner still
		// works (that node coordinates), it only costs a hop.
		_ = r.refresh(ctx)
		cancel()
	}
}

func (r *router) refreshTimeout() time.Duration {
	if r.c.cfg.timeout > 0 {
		return r.c.cfg.timeout
	}
	return DefaultTimeout
}

func (r *router) stop() { r.stopOnce.Do(func() { close(r.done) }) }
