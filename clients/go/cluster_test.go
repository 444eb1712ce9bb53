package dhashmap

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// liveCluster is a real 3-node dhashmap cluster (memory storage) that the
// integration tests share. It is started by the first test that needs it and
// stopped by TestMain, so that the unit tests alone never start it.
type liveCluster struct {
	dir   string
	nodes []*liveNode
}

type liveNode struct {
	id       string
	restPort int
	peerPort int
	grpcPort int
	cmd      *exec.Cmd
	log      string
	exited   chan struct{}
}

func (n *liveNode) restURL() string    { return fmt.Sprintf("http://127.0.0.1:%d", n.restPort) }
func (n *liveNode) nativeAddr() string { return fmt.Sprintf("127.0.0.1:%d", n.peerPort) }
func (n *liveNode) grpcAddr() string   { return fmt.Sprintf("127.0.0.1:%d", n.grpcPort) }

var (
	clusterOnce sync.Once
	cluster     *liveCluster
	clusterErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if cluster != nil {
		cluster.stop()
	}
	os.Exit(code)
}

// twistdPath: $DHASHMAP_TWISTD, or the repository's virtualenv.
func twistdPath() string {
	if p := os.Getenv("DHASHMAP_TWISTD"); p != "" {
		return p
	}
	p, _ := filepath.Abs(filepath.Join("..", "..", ".venv", "bin", "twistd"))
	return p
}

// useCluster returns the shared cluster, starting it if needed. A missing twistd
// or a cluster that does not come up fails the test: it is never skipped.
func useCluster(t *testing.T) *liveCluster {
	t.Helper()
	clusterOnce.Do(func() { cluster, clusterErr = startCluster(3) })
	if clusterErr != nil {
		t.Fatalf("the live cluster: %v", clusterErr)
	}
	return cluster
}

// freePorts picks n loopback ports that are free now, from below the kernel's ephemeral
// range: an ephemeral port (what listening on port 0 gives) may be handed to any process's
// outgoing connection between this pick and the node's own bind, which then fails with
// "address already in use". The listeners are held until all n are chosen, so none repeats.
func freePorts(n int) ([]int, error) {
	low := ephemeralLow()
	var listeners []net.Listener
	defer func() {
		for _, l := range listeners {
			l.Close()
		}
	}()
	var ports []int
	for tries := 0; len(ports) < n; tries++ {
		if tries > 1000 {
			return nil, fmt.Errorf("no free loopback port in 10000-%d after 1000 tries", low-1)
		}
		port := 10000 + rand.IntN(low-10000)
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			continue // in use
		}
		listeners = append(listeners, l)
		ports = append(ports, port)
	}
	return ports, nil
}

// ephemeralLow is the first port of the kernel's ephemeral range (Linux's default 32768).
func ephemeralLow() int {
	if data, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		var low, high int
		if _, err := fmt.Sscan(string(data), &low, &high); err == nil && low > 11000 {
			return low
		}
	}
	return 32768
}

func startCluster(size int) (*liveCluster, error) {
	twistd := twistdPath()
	if _, err := os.Stat(twistd); err != nil {
		return nil, fmt.Errorf("no twistd at %s (set DHASHMAP_TWISTD, or run `make` in the repository to create .venv): %v", twistd, err)
	}
	dir, err := os.MkdirTemp("", "dhashmap-go-test-")
	if err != nil {
		return nil, err
	}
	ports, err := freePorts(3 * size)
	if err != nil {
		return nil, err
	}
	c := &liveCluster{dir: dir}
	var seeds []string
	for i := range size {
		n := &liveNode{id: fmt.Sprintf("g%d", i+1), restPort: ports[3*i], peerPort: ports[3*i+1], grpcPort: ports[3*i+2], exited: make(chan struct{})}
		c.nodes = append(c.nodes, n)
		seeds = append(seeds, n.nativeAddr())
	}
	for _, n := range c.nodes {
		data := filepath.Join(dir, n.id)
		if err := os.MkdirAll(data, 0o755); err != nil {
			c.stop()
			return nil, err
		}
		n.log = filepath.Join(dir, n.id+".log")
		logFile, err := os.Create(n.log)
		if err != nil {
			c.stop()
			return nil, err
		}
		n.cmd = exec.Command("nice", "-n", "10", twistd, "-n", "--pidfile=", "dhashmap",
			"--node-id", n.id, "--bind", "127.0.0.1", "--port", strconv.Itoa(n.restPort),
			"--peer-port", strconv.Itoa(n.peerPort), "--grpc-port", strconv.Itoa(n.grpcPort), "--data-dir", data, "--storage", "memory",
			"--seed-nodes", strings.Join(seeds, ","))
		n.cmd.Dir = dir
		n.cmd.Stdout, n.cmd.Stderr = logFile, logFile
		configureProcess(n.cmd)
		if err := n.cmd.Start(); err != nil {
			logFile.Close()
			c.stop()
			return nil, fmt.Errorf("starting %s: %v", twistd, err)
		}
		go func(n *liveNode, f *os.File) {
			_ = n.cmd.Wait()
			f.Close()
			close(n.exited)
		}(n, logFile)
	}
	if err := c.waitReady(60 * time.Second); err != nil {
		c.stop()
		return nil, err
	}
	return c, nil
}

// waitReady polls until every node is /ready and sees every member alive.
func (c *liveCluster) waitReady(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	client := &http.Client{Timeout: time.Second}
	for _, n := range c.nodes {
		for {
			select {
			case <-n.exited:
				return fmt.Errorf("node %s exited: %s", n.id, tail(n.log))
			default:
			}
			if ok, _ := nodeReady(client, n, len(c.nodes)); ok {
				break
			}
			if time.Now().After(deadline) {
				_, why := nodeReady(client, n, len(c.nodes))
				return fmt.Errorf("node %s not ready within %v (%s): %s", n.id, timeout, why, tail(n.log))
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	return nil
}

func nodeReady(client *http.Client, n *liveNode, size int) (bool, string) {
	resp, err := client.Get(n.restURL() + "/ready")
	if err != nil {
		return false, err.Error()
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return false, "/ready: " + resp.Status
	}
	resp, err = client.Get(n.restURL() + "/v1/cluster/members")
	if err != nil {
		return false, err.Error()
	}
	defer resp.Body.Close()
	var doc struct {
		Members []struct {
			State string `json:"state"`
		} `json:"members"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&doc); err != nil {
		return false, err.Error()
	}
	alive := 0
	for _, m := range doc.Members {
		if m.State == "alive" {
			alive++
		}
	}
	return alive == size, fmt.Sprintf("%d of %d members alive", alive, size)
}

func (c *liveCluster) stop() {
	for _, n := range c.nodes {
		if n.cmd != nil && n.cmd.Process != nil {
			terminateProcess(n.cmd)
		}
	}
	for _, n := range c.nodes {
		if n.cmd == nil || n.cmd.Process == nil {
			continue
		}
		select {
		case <-n.exited:
		case <-time.After(5 * time.Second):
			killProcess(n.cmd)
			<-n.exited
		}
	}
	os.RemoveAll(c.dir)
}

func tail(path string) string {
	data, _ := os.ReadFile(path)
	if len(data) > 2000 {
		data = data[len(data)-2000:]
	}
	return string(data)
}

func (c *liveCluster) seeds() []string {
	var out []string
	for _, n := range c.nodes {
		out = append(out, n.nativeAddr())
	}
	return out
}

func (c *liveCluster) nativeClient(t *testing.T, opts ...Option) *NativeClient {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	client, err := NewNativeClient(ctx, c.seeds(), opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	return client
}

func (c *liveCluster) restClient(t *testing.T, node int) *RESTClient {
	t.Helper()
	client, err := NewRESTClient(c.nodes[node].restURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	return client
}

func (c *liveCluster) grpcClient(t *testing.T, node int, opts ...Option) *GRPCClient {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	client, err := NewGRPCClient(ctx, c.nodes[node].grpcAddr(), opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	return client
}
