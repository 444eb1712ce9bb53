package dhashmap

import (
	"encoding/hex"
	"errors"
	"net/url"
	"strings"
	"testing"

	"github.com/cespare/xxhash/v2"
)

// The test vectors of docs/partitioning.md.
func TestPartitionVectors(t *testing.T) {
	for _, tc := range []struct {
		keyHex    string
		hash      uint64
		partition int
	}{
		{"", 0xef46db3751d8e999, 409},
		{"61", 0xd24ec4f1a98c6e5b, 603},
		{"757365722f3432", 0xe89f2a24fc2bb767, 871},
		{"00ff", 0xe0d97d9a03131d7d, 381},
		{"d0bad0bbd18ed187", 0xa17d2dd13d89d19c, 412},
		{strings.Repeat("78", 100), 0x92f0de5a88a3c094, 148},
	} {
		key, err := hex.DecodeString(tc.keyHex)
		if err != nil {
			t.Fatal(err)
		}
		if got := xxhash.Sum64(key); got != tc.hash {
			t.Errorf("xxh64(%s) = %x, want %x", tc.keyHex, got, tc.hash)
		}
		if got := Partition(key, 1024); got != tc.partition {
			t.Errorf("Partition(%s) = %d, want %d", tc.keyHex, got, tc.partition)
		}
		ring := &Ring{Partitions: 1024, Owners: make([][]string, 1024)}
		ring.Owners[tc.partition] = []string{"n3", "n2", "n1"}
		if got := ring.OwnersOf(key); len(got) != 3 || got[0] != "n3" {
			t.Errorf("OwnersOf(%s) = %v", tc.keyHex, got)
		}
	}
}

// Every byte value survives the key path: percent-decoding it gives the key back,
// and nothing but unreserved characters is left unescaped ('.' neither).
func TestKeyPath(t *testing.T) {
	key := make([]byte, 256)
	for i := range key {
		key[i] = byte(i)
	}
	path := keyPath(key)
	raw := strings.TrimPrefix(path, "/v1/kv/")
	if strings.ContainsAny(raw, "./+?#") {
		t.Fatalf("unescaped reserved characters in %s", raw)
	}
	decoded, err := url.PathUnescape(raw)
	if err != nil || decoded != string(key) {
		t.Fatalf("round trip: %v", err)
	}
	if keyPath([]byte("..")) != "/v1/kv/%2E%2E" {
		t.Fatalf("dot segment: %s", keyPath([]byte("..")))
	}
}

func TestErrorFromResponse(t *testing.T) {
	e := errorFromResponse(503, []byte(`{"error": {"code": "unavailable", "message": "write: 1 of 2 required replicas answered", "acks": 1, "required": 2}}`))
	if !errors.Is(e, ErrUnavailable) || e.Acks != 1 || e.Required != 2 || e.Code != "unavailable" || e.Status != 503 {
		t.Fatalf("503: %#v", e)
	}
	e = errorFromResponse(503, []byte(`{"error": {"code": "storage_error", "message": "disk"}}`))
	if !errors.Is(e, ErrUnavailable) || e.Required != 0 || e.Code != "storage_error" {
		t.Fatalf("503 storage: %#v", e)
	}
	e = errorFromResponse(502, []byte("<html>Bad Gateway</html>"))
	if !errors.Is(e, ErrServer) || e.Message != "<html>Bad Gateway</html>" || e.Code != "internal" {
		t.Fatalf("proxy 502: %#v", e)
	}
	for status, kind := range map[int]error{400: ErrInvalidRequest, 403: ErrForbidden, 404: ErrNotFound,
		412: ErrPreconditionFailed, 413: ErrTooLarge, 414: ErrTooLarge, 507: ErrStorageFull, 500: ErrServer} {
		if e := errorFromResponse(status, nil); !errors.Is(e, kind) || e.Message == "" {
			t.Errorf("%d: %#v", status, e)
		}
	}
	if e := errorFromResponse(414, nil); e.Code != "key_too_long" {
		t.Errorf("414 code %s", e.Code)
	}
	// A 404 about a route, not a key (a wrong base URL), must not read as "no such key".
	noRoute := errorFromResponse(404, []byte(`{"error": {"code": "no_route", "message": "no such endpoint"}}`))
	if errors.Is(noRoute, ErrNotFound) || !errors.Is(noRoute, ErrServer) || noRoute.Code != "no_route" {
		t.Errorf("no_route: %#v", noRoute)
	}
	if e := errorFromResponse(404, []byte(`{"error": {"code": "not_found", "message": "no value"}}`)); !errors.Is(e, ErrNotFound) {
		t.Errorf("not_found: %#v", e)
	}
}

func TestVersionTokens(t *testing.T) {
	for in, want := range map[string]string{`"AaIX"`: "AaIX", `W/"AaIX"`: "AaIX", "AaIX": "AaIX"} {
		if got, err := versionFromETag(in); err != nil || got != want {
			t.Errorf("versionFromETag(%s) = %s %v", in, got, err)
		}
	}
	if _, err := versionFromETag(""); !errors.Is(err, ErrBadResponse) {
		t.Errorf("no ETag: %v", err)
	}
	for in, want := range map[string]string{`"tok"`: "tok", "tok": "tok", "*": "*"} {
		if got, err := matchToken(in); err != nil || got != want {
			t.Errorf("matchToken(%s) = %s %v", in, got, err)
		}
	}
}

func TestConsistencyString(t *testing.T) {
	for c, want := range map[Consistency]string{One: "one", Quorum: "quorum", All: "all", Replicas(2): "2"} {
		if c.String() != want {
			t.Errorf("%v: %s", c, want)
		}
	}
}

func TestNeverSent(t *testing.T) {
	// grpc-go fails a call at pick time, before it has a transport, with "connection error:
	// desc = ...": such a write may go to the next owner. One that failed after it was sent may not.
	for msg, want := range map[string]bool{
		`connection error: desc = "transport: Error while dialing: dial tcp 127.0.0.1:1: connect: connection refused"`: true,
		`connection error: desc = "error reading server preface: read tcp: connection reset by peer"`:                  true,
		`error reading from server: EOF`: false,
		`transport is closing`:           false,
	} {
		if got := neverSent(&Error{Kind: ErrConnection, Message: msg}); got != want {
			t.Errorf("neverSent(%q) = %v", msg, got)
		}
	}
}
