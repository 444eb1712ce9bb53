package dhashmap

import "sync"

// runBatch calls do(i) for i in [0, n), at most width at a time. There is no batch
// RPC yet: a batch is that many single requests, pipelined on the native
// connections (or spread over pooled HTTP connections). Once the batch's ctx is
// done the remaining calls still run and fail at once, so every result is set.
func runBatch(n, width int, do func(i int)) {
	if n == 0 {
		return
	}
	if width > n {
		width = n
	}
	var wg sync.WaitGroup
	next := make(chan int)
	for range width {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				do(i)
			}
		}()
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
}
