package dhashmap

import (
	"fmt"
	"net"
	"strconv"

	"github.com/cespare/xxhash/v2"
)

// Version of this client, sent in the native Hello's software_version.
const Version = "0.1.0"

// Value is a value read from the store and its version token.
//
// Version is opaque and the same string on both transports (the REST ETag without
// its quotes): pass it back to CompareAndSwap, WithIfMatch on Put or Delete, to
// write only if nobody else has written since.
type Value struct {
	Value   []byte
	Version string
}

// Item is one key and value for BatchPut.
type Item struct {
	Key, Value []byte
}

// GetResult is one key's outcome in BatchGet. Err is ErrNotFound (as errors.Is)
// when the key has no live value.
type GetResult struct {
	Key []byte
	Value
	Err error
}

// PutResult is one item's outcome in BatchPut.
type PutResult struct {
	Key     []byte
	Version string
	Err     error
}

// Page is one page of a key listing. Cursor is "" after the last page. A page may
// hold fewer keys than asked for, even none, and still have a cursor: only Cursor
// == "" means the listing is done.
type Page struct {
	Keys   [][]byte
	Cursor string
}

// Member is one node of the cluster as /v1/cluster/members shows it.
type Member struct {
	ID          string
	State       string // alive, suspect, dead or left
	Host        string
	PeerPort    int // the native protocol's port
	RESTPort    int
	GRPCPort    int // 0 when the node does not serve gRPC (or the REST node did not say)
	Weight      int
	Version     string // the node's software version
	Incarnation int
}

// NativeAddr is the member's native protocol address, host:port.
func (m Member) NativeAddr() string { return net.JoinHostPort(m.Host, strconv.Itoa(m.PeerPort)) }

// RESTURL is the member's REST base URL.
func (m Member) RESTURL() string {
	return "http://" + net.JoinHostPort(m.Host, strconv.Itoa(m.RESTPort))
}

// GRPCAddr is the member's gRPC address, host:port ("" when it serves none).
func (m Member) GRPCAddr() string {
	if m.GRPCPort == 0 {
		return ""
	}
	return net.JoinHostPort(m.Host, strconv.Itoa(m.GRPCPort))
}

// Live: the member serves requests (alive, or suspect, which the cluster still uses).
func (m Member) Live() bool { return m.State == "alive" || m.State == "suspect" }

// Ring is the cluster's partition table as /v1/cluster/ring shows it.
type Ring struct {
	Partitions int    // Q
	Replicas   int    // N
	Hash       string // "xxh64"
	Nodes      []string
	// Owners[p] is partition p's preference list: node ids, the first one first.
	Owners [][]string
}

// Partition is the partition of key in this ring.
func (r *Ring) Partition(key []byte) int { return Partition(key, r.Partitions) }

// OwnersOf is key's preference list.
func (r *Ring) OwnersOf(key []byte) []string { return r.Owners[r.Partition(key)] }

// Partition is the partition of key among partitions: xxHash64 of the key's bytes
// with seed 0, modulo the partition count (docs/partitioning.md). Every node and
// client computes it so.
func Partition(key []byte, partitions int) int {
	if partitions <= 0 {
		panic(fmt.Sprintf("dhashmap: partition count must be positive, not %d", partitions))
	}
	return int(xxhash.Sum64(key) % uint64(partitions))
}
