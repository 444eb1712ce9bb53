// A tiny example: write, read, compare-and-swap and list through the transport
// -transport picks (native protocol, REST or gRPC; native and gRPC with smart
// routing), and read the same key over REST.
//
//	go run ./example -transport native -native 127.0.0.1:7000 -rest http://127.0.0.1:8080
//	go run ./example -transport grpc -grpc 127.0.0.1:9090
//	go run ./example -transport rest -rest http://127.0.0.1:8080
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"iter"
	"log"
	"os"
	"strings"
	"time"

	dhashmap "github.com/dhashmap/dhashmap/clients/go"
)

// client is what the example uses; NativeClient, RESTClient and GRPCClient all have it.
type client interface {
	Get(ctx context.Context, key []byte, opts ...dhashmap.CallOption) (dhashmap.Value, error)
	Put(ctx context.Context, key, value []byte, opts ...dhashmap.CallOption) (string, error)
	CompareAndSwap(ctx context.Context, key []byte, expectedVersion *string, value []byte, opts ...dhashmap.CallOption) (string, error)
	Scan(ctx context.Context, prefix []byte, opts ...dhashmap.CallOption) iter.Seq2[[]byte, error]
	Close() error
}

func connect(ctx context.Context, transport, native, restURL, grpcAddr string) (client, error) {
	switch transport {
	case "native":
		return dhashmap.NewNativeClient(ctx, strings.Split(native, ","), dhashmap.WithSmartRouting())
	case "rest":
		return dhashmap.NewRESTClient(restURL)
	case "grpc":
		return dhashmap.NewGRPCClient(ctx, grpcAddr, dhashmap.WithSmartRouting())
	}
	return nil, fmt.Errorf("-transport must be native, rest or grpc, not %q", transport)
}

func main() {
	transport := flag.String("transport", "native", "native, rest or grpc")
	native := flag.String("native", "127.0.0.1:7000", "native (peer) addresses, comma-separated")
	restURL := flag.String("rest", "http://127.0.0.1:8080", "a node's REST URL")
	grpcAddr := flag.String("grpc", "127.0.0.1:9090", "a node's gRPC address")
	flag.Parse()

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	c, err := connect(ctx, *transport, *native, *restURL, *grpcAddr)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	defer c.Close()
	fmt.Printf("transport: %s\n", *transport)

	key := []byte("example/greeting")
	version, err := c.Put(ctx, key, []byte("hello"), dhashmap.WithTTL(time.Hour))
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("put %s at version %s\n", key, version)

	// Compare-and-swap: only if nobody wrote since.
	if _, err := c.CompareAndSwap(ctx, key, &version, []byte("hello again")); err != nil {
		log.Fatal(err)
	}
	if _, err := c.CompareAndSwap(ctx, key, &version, []byte("lost")); errors.Is(err, dhashmap.ErrPreconditionFailed) {
		fmt.Println("second CAS with the old version: precondition failed, as expected")
	}

	// The same key over REST; versions are the same tokens on every transport.
	rest, err := dhashmap.NewRESTClient(*restURL)
	if err != nil {
		log.Fatal(err)
	}
	v, err := rest.Get(ctx, key)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("REST read %q (version %s)\n", v.Value, v.Version)

	for k, err := range c.Scan(ctx, []byte("example/")) {
		if err != nil {
			log.Fatal(err)
		}
		fmt.Printf("listed %s\n", k)
	}
	if _, err := c.Get(ctx, []byte("example/absent")); errors.Is(err, dhashmap.ErrNotFound) {
		fmt.Println("example/absent: not found")
	}
}
