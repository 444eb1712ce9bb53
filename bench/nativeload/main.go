// Command nativeload is a bounded load generator for dhashmap's native protocol, through the
// Go client (clients/go NewNativeClient) with a fixed number of requests in flight.
//
// Usage (from the repository root; bench/grpc_bench.sh runs it for docs/benchmarks.md):
//
//	cd bench/nativeload && go run . -addr 127.0.0.1:7000 -op get -c 50 -d 10s
//	go run . -addr 127.0.0.1:7000 -op put -c 50 -d 10s -keys 100000 -size 100
//	go run . -addr 127.0.0.1:7000 -op preload -keys 100000
//
// -c goroutines each keep one request in flight (50 in flight in all) over -pool pipelined
// connections; keys are bench%08d picked at random among -keys (preload them first for get:
// a miss counts as an error). Prints one line: ops, requests/s, p50, p99 and errors.
//
// -procs (GOMAXPROCS, default 1) is how many threads run Go code at once: one, like
// redis-benchmark, which the native GET is measured beside. On a machine of few cores a second
// one mostly adds thread wake-ups (futex calls) and competes with the node under test for the
// cores: on two cores, 67k GET/s with two against 79k with one.
package main

import (
	"context"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"

	dhashmap "github.com/dhashmap/dhashmap/clients/go"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:7000", "native address(es) host:port, comma-separated")
	op := flag.String("op", "get", "get, put or preload")
	conc := flag.Int("c", 50, "requests in flight")
	dur := flag.Duration("d", 10*time.Second, "duration of the run (at most 60s)")
	keys := flag.Int("keys", 100000, "keys bench%08d to pick from")
	size := flag.Int("size", 100, "value size for put and preload")
	pool := flag.Int("pool", 2, "connections per node")
	procs := flag.Int("procs", 1, "threads running Go code at once (GOMAXPROCS)")
	flag.Parse()
	if *procs < 1 {
		fmt.Fprintln(os.Stderr, "nativeload: -procs must be at least 1")
		os.Exit(2)
	}
	runtime.GOMAXPROCS(*procs)
	if *dur > 60*time.Second {
		fmt.Fprintln(os.Stderr, "nativeload: -d is bounded to 60s")
		os.Exit(2)
	}
	ctx := context.Background()
	c, err := dhashmap.NewNativeClient(ctx, strings.Split(*addr, ","), dhashmap.WithPoolSize(*pool))
	if err != nil {
		fmt.Fprintln(os.Stderr, "nativeload:", err)
		os.Exit(1)
	}
	defer c.Close()
	value := []byte(strings.Repeat("v", *size))
	key := func(i int) []byte { return fmt.Appendf(nil, "bench%08d", i) }

	if *op == "preload" {
		var wg sync.WaitGroup
		errs := make(chan error, *conc)
		for w := 0; w < *conc; w++ {
			wg.Add(1)
			go func(w int) {
				defer wg.Done()
				for i := w; i < *keys; i += *conc {
					if _, err := c.Put(ctx, key(i), value); err != nil {
						errs <- err
						return
					}
				}
			}(w)
		}
		wg.Wait()
		close(errs)
		if err := <-errs; err != nil {
			fmt.Fprintln(os.Stderr, "nativeload: preload:", err)
			os.Exit(1)
		}
		fmt.Printf("preloaded %d keys\n", *keys)
		return
	}
	if *op != "get" && *op != "put" {
		fmt.Fprintln(os.Stderr, "nativeload: -op must be get, put or preload")
		os.Exit(2)
	}

	deadline := time.Now().Add(*dur)
	lat := make([][]time.Duration, *conc)
	errCount := make([]int, *conc)
	var wg sync.WaitGroup
	start := time.Now()
	for w := 0; w < *conc; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(w), 42))
			own := make([]time.Duration, 0, 1<<16)
			for {
				t0 := time.Now()
				if t0.After(deadline) {
					break
				}
				k := key(r.IntN(*keys))
				var err error
				if *op == "get" {
					_, err = c.Get(ctx, k)
				} else {
					_, err = c.Put(ctx, k, value)
				}
				if err != nil {
					errCount[w]++
				}
				own = append(own, time.Since(t0))
			}
			lat[w] = own
		}(w)
	}
	wg.Wait()
	elapsed := time.Since(start)
	var all []time.Duration
	errs := 0
	for w := range lat {
		all = append(all, lat[w]...)
		errs += errCount[w]
	}
	slices.Sort(all)
	pct := func(p float64) float64 {
		if len(all) == 0 {
			return 0
		}
		return float64(all[int(p*float64(len(all)-1))].Microseconds()) / 1000
	}
	fmt.Printf("op=%s in_flight=%d ops=%d rps=%.0f p50_ms=%.2f p99_ms=%.2f errors=%d\n",
		*op, *conc, len(all), float64(len(all))/elapsed.Seconds(), pct(0.50), pct(0.99), errs)
}
