// A tiny example: write, read, compare-and-swap and list through the native
// protocol with smart routing, and read the same key over REST.
//
//	go run ./example -native 127.0.0.1:7000 -rest http://127.0.0.1:8080
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"strings"
	"time"

	dhashmap "github.com/dhashmap/dhashmap/clients/go"
)

func main() {
	native := flag.String("native", "127.0.0.1:7000", "native (peer) addresses, comma-separated")
	restURL := flag.String("rest", "http://127.0.0.1:8080", "a node's REST URL")
	flag.Parse()

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	client, err := dhashmap.NewNativeClient(ctx, strings.Split(*native, ","), dhashmap.WithSmartRouting())
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()

	key := []byte("example/greeting")
	version, err := client.Put(ctx, key, []byte("hello"), dhashmap.WithTTL(time.Hour))
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("put %s at version %s\n", key, version)

	// Compare-and-swap: only if nobody wrote since.
	if _, err := client.CompareAndSwap(ctx, key, &version, []byte("hello again")); err != nil {
		log.Fatal(err)
	}
	if _, err := client.CompareAndSwap(ctx, key, &version, []byte("lost")); errors.Is(err, dhashmap.ErrPreconditionFailed) {
		fmt.Println("second CAS with the old version: precondition failed, as expected")
	}

	// The same key over REST; versions are the same tokens on both.
	rest, err := dhashmap.NewRESTClient(*restURL)
	if err != nil {
		log.Fatal(err)
	}
	v, err := rest.Get(ctx, key)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("REST read %q (version %s)\n", v.Value, v.Version)

	for k, err := range client.Scan(ctx, []byte("example/")) {
		if err != nil {
			log.Fatal(err)
		}
		fmt.Printf("listed %s\n", k)
	}
	if _, err := rest.Get(ctx, []byte("example/absent")); errors.Is(err, dhashmap.ErrNotFound) {
		fmt.Println("example/absent: not found")
	}
}
