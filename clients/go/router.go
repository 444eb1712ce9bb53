package dhashmap

import (
	"context"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// router is smart routing's view of the cluster: the partition table and the
// members' addresses and states, reloaded every refresh interval and soon after a
// connection error (a node went down, or the membership changed), and when a node
// it routed to answers that it does not own the key (the server's "not mine":
// see notMine). It serves the
// native client (table over REST, native addresses) and the gRPC client (table
// over gRPC, gRPC addresses) alike; a routerSource says how to load and address.
type router struct {
	src routerSource

	mu      sync.RWMutex
	ring    *Ring
	members map[string]Member

	kicks    chan struct{}
	done     chan struct{}
	stopOnce sync.Once

	// stale: a node said "not mine" and the reload it asked for has not happened
	// yet; further "not mine" answers meanwhile ask for nothing more.
	stale atomic.Bool
	// notMineReloads counts the reloads "not mine" asked for (tests, debugging).
	notMineReloads atomic.Int64
}

// routerSource is what a transport gives smart routing.
type routerSource struct {
	// load fetches the partition table and the members from any node that answers.
	load func(ctx context.Context) (*Ring, []Member, error)
	// addr is a member's address on this transport ("" when it serves none).
	addr func(Member) string
	// seeds are tried after a key's owners, in this order.
	seeds   []string
	refresh time.Duration
	timeout time.Duration
}

// minRefreshGap keeps connection errors from turning into a storm of reloads.
const minRefreshGap = time.Second

func newRouter(src routerSource) *router {
	return &router{src: src, kicks: make(chan struct{}, 1), done: make(chan struct{})}
}

// route: the addresses of key's live owners in preference-list order, then the
// seeds as fallbacks; nil before the table is loaded.
func (r *router) route(key []byte) []string {
	r.mu.RLock()
	ring, members := r.ring, r.members
	r.mu.RUnlock()
	if ring == nil {
		return nil
	}
	var out []string
	for _, id := range ring.OwnersOf(key) {
		if m, ok := members[id]; ok && m.Live() {
			if addr := r.src.addr(m); addr != "" {
				out = append(out, addr)
			}
		}
	}
	for _, s := range r.src.seeds {
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
	ring, list, err := r.src.load(ctx)
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
	r.stale.Store(false)
	return nil
}

// notMine: a node answered that it is not one of the key's owners (the table in
// hand is stale). The table is reloaded in the background, once however many
// answers say so until then, and at most once per minRefreshGap; requests
// meanwhile keep the old table (the node they reach coordinates them).
func (r *router) notMine() {
	if r.stale.CompareAndSwap(false, true) {
		r.notMineReloads.Add(1)
		r.kick()
	}
}

// kick asks for a reload soon.
func (r *router) kick() {
	select {
	case r.kicks <- struct{}{}:
	default:
	}
}

func (r *router) run() {
	ticker := time.NewTicker(r.src.refresh)
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
		if r.refresh(ctx) != nil {
			r.stale.Store(false) // let the next "not mine" ask again
		}
		cancel()
	}
}

func (r *router) refreshTimeout() time.Duration {
	if r.src.timeout > 0 {
		return r.src.timeout
	}
	return DefaultTimeout
}

func (r *router) stop() { r.stopOnce.Do(func() { close(r.done) }) }
