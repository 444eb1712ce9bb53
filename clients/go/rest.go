package dhashmap

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"iter"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// DefaultPageSize is the number of keys Scan asks for per page.
const DefaultPageSize = 1000

// RESTClient talks to one node's REST API (docs/api.md). It is safe for
// concurrent use; connections are pooled and kept alive by its *http.Client.
type RESTClient struct {
	base    string // scheme://host[:port][/path], no trailing slash
	http    *http.Client
	timeout time.Duration
}

// NewRESTClient returns a client for the node at baseURL ("http://127.0.0.1:8080";
// a path prefix, for a node behind a reverse proxy, is kept). It does not connect
// until the first request.
func NewRESTClient(baseURL string, opts ...Option) (*RESTClient, error) {
	cfg := newConfig(opts)
	u, err := url.Parse(baseURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("dhashmap: the node URL must be http:// or https:// with a host, not %q", baseURL)
	}
	if u.RawQuery != "" || u.Fragment != "" {
		return nil, fmt.Errorf("dhashmap: the node URL must not have a query or fragment: %q", baseURL)
	}
	return &RESTClient{base: strings.TrimRight(baseURL, "/"), http: httpClientOf(cfg), timeout: cfg.timeout}, nil
}

func httpClientOf(cfg config) *http.Client {
	if cfg.httpClient != nil {
		return cfg.httpClient
	}
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.MaxIdleConnsPerHost = 32
	// Redirects are answers, not something to follow: they become errors.
	return &http.Client{
		Transport:     t,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// URL is the node's base URL.
func (c *RESTClient) URL() string { return c.base }

// Close closes idle connections; the client can still be used afterwards.
func (c *RESTClient) Close() error {
	c.http.CloseIdleConnections()
	return nil
}

// Get returns the live value of key and its version; ErrNotFound if there is none.
func (c *RESTClient) Get(ctx context.Context, key []byte, opts ...CallOption) (Value, error) {
	cc, err := callOptions("Get", optR, opts)
	if err != nil {
		return Value{}, err
	}
	query := url.Values{}
	if cc.set&optR != 0 {
		query.Set("r", cc.r.String())
	}
	status, header, body, err := c.do(ctx, http.MethodGet, keyPath(key), query, nil, nil)
	if err != nil {
		return Value{}, err
	}
	if status != http.StatusOK {
		return Value{}, c.fail(status, body)
	}
	version, err := versionFromETag(header.Get("ETag"))
	if err != nil {
		return Value{}, err
	}
	return Value{Value: body, Version: version}, nil
}

// Put stores value under key and returns the new version token.
func (c *RESTClient) Put(ctx context.Context, key, value []byte, opts ...CallOption) (string, error) {
	cc, err := callOptions("Put", optTTL|optW|optIfMatch|optIfNoneMatch, opts)
	if err != nil {
		return "", err
	}
	return c.put(ctx, key, value, cc)
}

func (c *RESTClient) put(ctx context.Context, key, value []byte, cc callConfig) (string, error) {
	query := url.Values{}
	if cc.set&optTTL != 0 {
		query.Set("ttl", strconv.FormatInt(int64(cc.ttl/time.Second), 10))
	}
	if cc.set&optW != 0 {
		query.Set("w", cc.w.String())
	}
	headers := conditionHeaders(cc)
	headers.Set("Content-Type", "application/octet-stream")
	if value == nil {
		value = []byte{}
	}
	status, header, body, err := c.do(ctx, http.MethodPut, keyPath(key), query, headers, value)
	if err != nil {
		return "", err
	}
	if status != http.StatusOK && status != http.StatusCreated && status != http.StatusNoContent {
		return "", c.fail(status, body)
	}
	return versionFromETag(header.Get("ETag"))
}

// Delete deletes key; deleting an absent key succeeds (deletes are idempotent).
// With WithIfMatch the delete happens only at that version, else ErrPreconditionFailed.
func (c *RESTClient) Delete(ctx context.Context, key []byte, opts ...CallOption) error {
	cc, err := callOptions("Delete", optW|optIfMatch, opts)
	if err != nil {
		return err
	}
	query := url.Values{}
	if cc.set&optW != 0 {
		query.Set("w", cc.w.String())
	}
	status, _, body, err := c.do(ctx, http.MethodDelete, keyPath(key), query, conditionHeaders(cc), nil)
	if err != nil {
		return err
	}
	if status != http.StatusOK && status != http.StatusNoContent {
		return c.fail(status, body)
	}
	return nil
}

// CompareAndSwap writes value only if key's current version is *expectedVersion,
// or, when expectedVersion is nil, only if key has no live value (create only).
// It returns the new version; ErrPreconditionFailed when someone else got there
// first, which is the cue to Get again and retry.
func (c *RESTClient) CompareAndSwap(ctx context.Context, key []byte, expectedVersion *string, value []byte, opts ...CallOption) (string, error) {
	cc, err := casOptions(expectedVersion, opts)
	if err != nil {
		return "", err
	}
	return c.put(ctx, key, value, cc)
}

// BatchGet reads keys concurrently and returns one result per key, in order. A key
// without a live value has Err matching ErrNotFound. The error is non-nil when some
// key failed for another reason; it wraps the first such failure.
func (c *RESTClient) BatchGet(ctx context.Context, keys [][]byte, opts ...CallOption) ([]GetResult, error) {
	if _, err := callOptions("BatchGet", optR, opts); err != nil {
		return nil, err
	}
	results := make([]GetResult, len(keys))
	runBatch(len(keys), restBatchWidth, func(i int) {
		v, err := c.Get(ctx, keys[i], opts...)
		results[i] = GetResult{Key: keys[i], Value: v, Err: err}
	})
	return results, batchGetError(results)
}

// BatchPut writes items concurrently and returns one result per item, in order.
// The error is non-nil when some item failed; it wraps the first failure.
func (c *RESTClient) BatchPut(ctx context.Context, items []Item, opts ...CallOption) ([]PutResult, error) {
	cc, err := callOptions("BatchPut", optTTL|optW, opts)
	if err != nil {
		return nil, err
	}
	results := make([]PutResult, len(items))
	runBatch(len(items), restBatchWidth, func(i int) {
		v, err := c.put(ctx, items[i].Key, items[i].Value, cc)
		results[i] = PutResult{Key: items[i].Key, Version: v, Err: err}
	})
	return results, batchPutError(results)
}

// List returns one page of live keys starting with prefix, in byte order, after
// cursor ("" for the first page); limit is 1 to 10,000 (0: the node's default).
func (c *RESTClient) List(ctx context.Context, prefix []byte, cursor string, limit int) (Page, error) {
	return listPage(ctx, c.http, c.timeout, c.base, prefix, cursor, limit)
}

// Scan iterates over every live key starting with prefix, in byte order, fetching
// pages lazily (WithPageSize keys at a time). It is not a snapshot: keys written or
// deleted meanwhile may or may not appear. Stop at the first non-nil error.
func (c *RESTClient) Scan(ctx context.Context, prefix []byte, opts ...CallOption) iter.Seq2[[]byte, error] {
	return scan(ctx, prefix, opts, func(ctx context.Context, cursor string, limit int) (Page, error) {
		return c.List(ctx, prefix, cursor, limit)
	})
}

// Members returns the cluster's members as this node sees them.
func (c *RESTClient) Members(ctx context.Context) ([]Member, error) {
	return fetchMembers(ctx, c.http, c.timeout, c.base)
}

// Ring returns the cluster's partition table.
func (c *RESTClient) Ring(ctx context.Context) (*Ring, error) {
	return fetchRing(ctx, c.http, c.timeout, c.base)
}

func (c *RESTClient) do(ctx context.Context, method, path string, query url.Values, headers http.Header, body []byte) (int, http.Header, []byte, error) {
	return doHTTP(ctx, c.http, c.timeout, method, c.base, path, query, headers, body)
}

func (c *RESTClient) fail(status int, body []byte) error {
	e := errorFromResponse(status, body)
	e.Node = c.base
	return e
}

const restBatchWidth = 16

// doHTTP is one request, with its transport errors turned into ours and the
// client's timeout applied as a context deadline (so that a timeout is
// context.DeadlineExceeded whichever of the two came first).
func doHTTP(ctx context.Context, client *http.Client, timeout time.Duration, method, base, path string,
	query url.Values, headers http.Header, body []byte) (int, http.Header, []byte, error) {
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	target := base + path
	if len(query) > 0 {
		target += "?" + query.Encode()
	}
	var reader io.Reader
	if body != nil {
		reader = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, target, reader)
	if err != nil {
		return 0, nil, nil, &Error{Kind: ErrInvalidRequest, Code: "invalid_request", Message: err.Error(), Node: base}
	}
	for name, values := range headers {
		req.Header[name] = values
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, nil, nil, transportError(ctx, err, method+" "+path, base)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, nil, nil, transportError(ctx, err, method+" "+path, base)
	}
	return resp.StatusCode, resp.Header, data, nil
}

func transportError(ctx context.Context, err error, what, node string) error {
	if ctx.Err() != nil {
		e := contextError(ctx, what+": no answer in time")
		e.Node = node
		return e
	}
	return &Error{Kind: ErrConnection, Code: "connection_error", Message: what + ": " + err.Error(), Node: node}
}

func conditionHeaders(cc callConfig) http.Header {
	h := http.Header{}
	if cc.set&optIfMatch != 0 {
		if cc.ifMatch == "*" {
			h.Set("If-Match", "*")
		} else {
			h.Set("If-Match", `"`+cc.ifMatch+`"`)
		}
	}
	if cc.ifNoneMatch {
		h.Set("If-None-Match", "*")
	}
	return h
}

func casOptions(expectedVersion *string, opts []CallOption) (callConfig, error) {
	cc, err := callOptions("CompareAndSwap", optTTL|optW, opts)
	if err != nil {
		return cc, err
	}
	if expectedVersion == nil {
		cc.set |= optIfNoneMatch
		cc.ifNoneMatch = true
		return cc, nil
	}
	token, err := matchToken(*expectedVersion)
	if err != nil {
		return cc, err
	}
	cc.set |= optIfMatch
	cc.ifMatch = token
	return cc, nil
}

// quoteBytes percent-encodes every byte except the unreserved letters, digits, '-',
// '_' and '~'. '.' is encoded too, so that a key "." or ".." is never taken for a
// dot segment by a URL normaliser on the way; '%2E' decodes to the same key.
func quoteBytes(data []byte) string {
	const hex = "0123456789ABCDEF"
	var b strings.Builder
	b.Grow(len(data) * 3)
	for _, c := range data {
		if 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_' || c == '~' {
			b.WriteByte(c)
			continue
		}
		b.WriteByte('%')
		b.WriteByte(hex[c>>4])
		b.WriteByte(hex[c&15])
	}
	return b.String()
}

func keyPath(key []byte) string { return "/v1/kv/" + quoteBytes(key) }

func versionFromETag(etag string) (string, error) {
	etag = strings.TrimSpace(etag)
	etag = strings.TrimPrefix(etag, "W/")
	if len(etag) >= 2 && etag[0] == '"' && etag[len(etag)-1] == '"' {
		etag = etag[1 : len(etag)-1]
	}
	if etag == "" {
		return "", newError(ErrBadResponse, "bad_response", "the server sent no ETag")
	}
	return etag, nil
}

func listPage(ctx context.Context, client *http.Client, timeout time.Duration, base string, prefix []byte, cursor string, limit int) (Page, error) {
	// The query is built by hand: url.Values would encode the prefix's bytes as
	// UTF-8 text; quoteBytes sends each byte as it is (and '+' as %2B).
	query := "prefix=" + quoteBytes(prefix) + "&encoding=base64"
	if limit != 0 {
		query += "&limit=" + strconv.Itoa(limit)
	}
	if cursor != "" {
		query += "&cursor=" + url.QueryEscape(cursor)
	}
	status, _, body, err := doHTTP(ctx, client, timeout, http.MethodGet, base, "/v1/kv?"+query, nil, nil, nil)
	if err != nil {
		return Page{}, err
	}
	if status != http.StatusOK {
		e := errorFromResponse(status, body)
		e.Node = base
		return Page{}, e
	}
	var doc struct {
		Keys   []string `json:"keys"`
		Cursor *string  `json:"cursor"`
	}
	if err := json.Unmarshal(body, &doc); err != nil || doc.Keys == nil {
		return Page{}, &Error{Kind: ErrBadResponse, Code: "bad_response", Node: base,
			Message: fmt.Sprintf("the server sent a listing that is not valid: %v", err)}
	}
	page := Page{Keys: make([][]byte, len(doc.Keys))}
	for i, k := range doc.Keys {
		key, err := base64.StdEncoding.DecodeString(k)
		if err != nil {
			return Page{}, &Error{Kind: ErrBadResponse, Code: "bad_response", Node: base,
				Message: fmt.Sprintf("the server sent a key that is not base64: %v", err)}
		}
		page.Keys[i] = key
	}
	if doc.Cursor != nil {
		page.Cursor = *doc.Cursor
	}
	return page, nil
}

// WithPageSize sets how many keys Scan asks for per page (1 to 10,000; default 1,000).
func WithPageSize(n int) CallOption {
	return func(c *callConfig) { c.set |= optPageSize; c.pageSize = n }
}

func scan(ctx context.Context, prefix []byte, opts []CallOption, list func(context.Context, string, int) (Page, error)) iter.Seq2[[]byte, error] {
	cc, err := callOptions("Scan", optPageSize, opts)
	limit := DefaultPageSize
	if cc.set&optPageSize != 0 {
		limit = cc.pageSize
	}
	return func(yield func([]byte, error) bool) {
		if err != nil {
			yield(nil, err)
			return
		}
		cursor := ""
		for {
			page, err := list(ctx, cursor, limit)
			if err != nil {
				yield(nil, err)
				return
			}
			for _, k := range page.Keys {
				if !yield(k, nil) {
					return
				}
			}
			if page.Cursor == "" {
				return
			}
			if page.Cursor == cursor {
				yield(nil, newError(ErrBadResponse, "bad_response", "the server returned the same cursor twice"))
				return
			}
			cursor = page.Cursor
		}
	}
}

func getJSON(ctx context.Context, client *http.Client, timeout time.Duration, base, path string, into any) error {
	status, _, body, err := doHTTP(ctx, client, timeout, http.MethodGet, base, path, nil, nil, nil)
	if err != nil {
		return err
	}
	if status != http.StatusOK {
		e := errorFromResponse(status, body)
		e.Node = base
		return e
	}
	if err := json.Unmarshal(body, into); err != nil {
		return &Error{Kind: ErrBadResponse, Code: "bad_response", Node: base,
			Message: fmt.Sprintf("%s: the answer is not the JSON expected: %v", path, err)}
	}
	return nil
}

func fetchMembers(ctx context.Context, client *http.Client, timeout time.Duration, base string) ([]Member, error) {
	var doc struct {
		Members []struct {
			ID        string `json:"id"`
			State     string `json:"state"`
			Addresses struct {
				Host string `json:"host"`
				Peer int    `json:"peer"`
				Rest int    `json:"rest"`
				GRPC int    `json:"grpc"`
			} `json:"addresses"`
			Weight      int    `json:"weight"`
			Version     string `json:"version"`
			Incarnation int    `json:"incarnation"`
		} `json:"members"`
	}
	if err := getJSON(ctx, client, timeout, base, "/v1/cluster/members", &doc); err != nil {
		return nil, err
	}
	members := make([]Member, len(doc.Members))
	for i, m := range doc.Members {
		members[i] = Member{ID: m.ID, State: m.State, Host: m.Addresses.Host, PeerPort: m.Addresses.Peer,
			RESTPort: m.Addresses.Rest, GRPCPort: m.Addresses.GRPC, Weight: m.Weight, Version: m.Version, Incarnation: m.Incarnation}
	}
	return members, nil
}

func fetchRing(ctx context.Context, client *http.Client, timeout time.Duration, base string) (*Ring, error) {
	var doc struct {
		Partitions int      `json:"partitions"`
		Replicas   int      `json:"replicas"`
		Hash       string   `json:"hash"`
		Nodes      []string `json:"nodes"`
		Table      []struct {
			Partition int      `json:"partition"`
			Owners    []string `json:"owners"`
		} `json:"table"`
	}
	if err := getJSON(ctx, client, timeout, base, "/v1/cluster/ring", &doc); err != nil {
		return nil, err
	}
	bad := func(why string) error {
		return &Error{Kind: ErrBadResponse, Code: "bad_response", Node: base, Message: "/v1/cluster/ring: " + why}
	}
	if doc.Partitions <= 0 {
		return nil, bad("no partition count")
	}
	if doc.Hash != "" && doc.Hash != "xxh64" {
		return nil, bad(fmt.Sprintf("hash %q is not the xxh64 this client computes", doc.Hash))
	}
	ring := &Ring{Partitions: doc.Partitions, Replicas: doc.Replicas, Hash: doc.Hash, Nodes: doc.Nodes,
		Owners: make([][]string, doc.Partitions)}
	for _, row := range doc.Table {
		if row.Partition < 0 || row.Partition >= doc.Partitions {
			return nil, bad(fmt.Sprintf("partition %d out of range", row.Partition))
		}
		ring.Owners[row.Partition] = row.Owners
	}
	return ring, nil
}

func batchGetError(results []GetResult) error {
	failed, first := 0, error(nil)
	for _, r := range results {
		if r.Err != nil && !errors.Is(r.Err, ErrNotFound) {
			if first == nil {
				first = r.Err
			}
			failed++
		}
	}
	if first == nil {
		return nil
	}
	return fmt.Errorf("dhashmap: %d of %d keys failed; the first: %w", failed, len(results), first)
}

func batchPutError(results []PutResult) error {
	failed, first := 0, error(nil)
	for _, r := range results {
		if r.Err != nil {
			if first == nil {
				first = r.Err
			}
			failed++
		}
	}
	if first == nil {
		return nil
	}
	return fmt.Errorf("dhashmap: %d of %d items failed; the first: %w", failed, len(results), first)
}
