# dhashmap — the two commands a fresh machine needs are `make run` and `make test`.
# The virtualenv's interpreter: the system's python3 (>= 3.11) first, for its optimised build
# (tools/pick-python says why); PYTHON=/path/to/python3 chooses another (then `make clean`).
PYTHON ?= $(shell tools/pick-python)
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

NODES ?= 3
DISCOVERY ?= static
# MANHOLE_PORT=2222: an admin shell per node on 127.0.0.1:2222-2224 (SSH with MANHOLE_KEYS=authorized_keys
# file, else telnet); docs/admin.md
MANHOLE_PORT ?= 0
MANHOLE_KEYS ?=

.PHONY: run run-client test lint clean bench bench-cluster bench-grpc swim-eval proto proto-check etcd consul grpcurl

$(STAMP): setup.py clients/python/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]' -e clients/python
	touch $(STAMP)

## run: set up and start a local cluster in the foreground (REST on :8080-8082, data in ./data/;
##      DISCOVERY=swim for gossip membership on :7946-7948)
run: $(STAMP)
	$(BIN)/python -m twisted_dhm.devcluster --nodes $(NODES) --discovery $(DISCOVERY) \
		--manhole-port $(MANHOLE_PORT) $(if $(MANHOLE_KEYS),--manhole-keys $(MANHOLE_KEYS))

## run-client: try dhm (docs/cli.md) against the cluster `make run` serves: put, get, list, members
run-client: $(STAMP)
	$(BIN)/dhm --node http://127.0.0.1:8080 put greeting 'hello from dhm'
	$(BIN)/dhm --node http://127.0.0.1:8080 get greeting && echo
	$(BIN)/dhm --node http://127.0.0.1:8080 list --limit 20
	$(BIN)/dhm --node http://127.0.0.1:8080 members

## test: set up and run the whole suite (lint, unit, integration, the Python, Go and JS clients); the integration
##       tests run a real etcd, installed with apt-get (etcd-server) when missing and run as root, and
##       a real Consul agent, built once from the Go module proxy by tools/get-consul.sh (needs Go >= 1.24);
##       first it checks that the committed generated code is current (proto-check)
test: $(STAMP) etcd consul grpcurl
	$(BIN)/ruff check .
	$(MAKE) --no-print-directory proto-check
	$(BIN)/pytest -q tests clients/python/tests
	cd clients/go && go vet ./... && DHASHMAP_TWISTD=$(CURDIR)/$(BIN)/twistd go test -count=1 -p 1 ./...
	cd clients/js && npm ci --no-audit --no-fund --loglevel=error && DHASHMAP_TWISTD=$(CURDIR)/$(BIN)/twistd npm test

etcd:
	@command -v etcd >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q etcd-server; \
	  else echo "make test needs etcd for its integration tests: sudo apt-get install etcd-server" >&2; exit 1; fi; }

consul:
	@tools/get-consul.sh >/dev/null

# grpcurl for the gRPC tests: go install at a pinned version, cached in ~/.cache/dhashmap
grpcurl:
	@tools/get-grpcurl.sh >/dev/null

lint: $(STAMP)
	$(BIN)/ruff check .

## bench: REST benchmark beside etcd's JSON gateway (needs wrk and etcd-server)
bench: $(STAMP)
	bench/rest_vs_etcd.sh

## bench-cluster: 3-node dhashmap beside 3-member etcd (needs wrk and etcd-server)
bench-cluster: $(STAMP)
	bench/cluster_vs_etcd.sh

## bench-grpc: gRPC (ghz), REST (wrk) and native protocol (bench/nativeload) on one node, beside plain grpc.aio
##             and redis-benchmark; NODES=3 for the cluster (needs ghz, wrk, go, redis-server; docs/benchmarks.md)
bench-grpc: $(STAMP)
	bench/grpc_bench.sh

## swim-eval: SWIM failure detection in the simulator, N = 10/100/1,000 at 0/5/10 % loss and with
##            stalled members, Lifeguard on and off -> docs/swim.md (about an hour of CPU on 2 cores)
swim-eval: $(STAMP)
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python bench/swim_eval.py

## proto: regenerate the protobuf code from proto/ (pinned generators: the [proto] extra, protoc-gen-go
##        and protoc-gen-go-grpc below) for Python, Go and the JS package's copy of kv.proto.
##        PROTO_OUT=dir writes the same files under dir instead (what proto-check compares).
PROTO_OUT ?= .
PROTOC_GEN_GO      := google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.12
PROTOC_GEN_GO_GRPC := google.golang.org/grpc/cmd/protoc-gen-go-grpc@v1.6.2
PROTOC := $(BIN)/python -m grpc_tools.protoc -Iproto/dhashmap/v1
GO_OUT := --plugin=protoc-gen-go=$(BIN)/protoc-gen-go --go_out=$(PROTO_OUT)/clients/go --go_opt=module=github.com/dhashmap/dhashmap/clients/go
proto: $(STAMP)
	$(BIN)/pip install --quiet -e '.[proto]'
	GOBIN=$(CURDIR)/$(BIN) go install $(PROTOC_GEN_GO)
	GOBIN=$(CURDIR)/$(BIN) go install $(PROTOC_GEN_GO_GRPC)
	mkdir -p $(PROTO_OUT)/twisted_dhm/peer $(PROTO_OUT)/twisted_dhm/api $(PROTO_OUT)/twisted_dhm/membership/swim \
		$(PROTO_OUT)/clients/python/dhashmap_client/_pb $(PROTO_OUT)/clients/go $(PROTO_OUT)/clients/js/proto/dhashmap/v1
	$(PROTOC) --python_out=$(PROTO_OUT)/twisted_dhm/peer --pyi_out=$(PROTO_OUT)/twisted_dhm/peer proto/dhashmap/v1/peer.proto
	$(PROTOC) --python_out=$(PROTO_OUT)/clients/python/dhashmap_client/_pb \
		--pyi_out=$(PROTO_OUT)/clients/python/dhashmap_client/_pb proto/dhashmap/v1/peer.proto
	$(PROTOC) $(GO_OUT) proto/dhashmap/v1/peer.proto
	$(PROTOC) $(GO_OUT) --plugin=protoc-gen-go-grpc=$(BIN)/protoc-gen-go-grpc --go-grpc_out=$(PROTO_OUT)/clients/go \
		--go-grpc_opt=module=github.com/dhashmap/dhashmap/clients/go proto/dhashmap/v1/kv.proto
	$(PROTOC) --python_out=$(PROTO_OUT)/twisted_dhm/membership/swim --pyi_out=$(PROTO_OUT)/twisted_dhm/membership/swim \
		proto/dhashmap/v1/gossip.proto
	$(PROTOC) --python_out=$(PROTO_OUT)/twisted_dhm/api --pyi_out=$(PROTO_OUT)/twisted_dhm/api \
		--grpc_python_out=$(PROTO_OUT)/twisted_dhm/api proto/dhashmap/v1/kv.proto
	sed -i 's/^import kv_pb2 as kv__pb2$$/from twisted_dhm.api import kv_pb2 as kv__pb2/' $(PROTO_OUT)/twisted_dhm/api/kv_pb2_grpc.py
	$(PROTOC) --python_out=$(PROTO_OUT)/clients/python/dhashmap_client/_pb --pyi_out=$(PROTO_OUT)/clients/python/dhashmap_client/_pb --grpc_python_out=$(PROTO_OUT)/clients/python/dhashmap_client/_pb proto/dhashmap/v1/kv.proto && sed -i 's/^import kv_pb2 as kv__pb2$$/from dhashmap_client._pb import kv_pb2 as kv__pb2/' $(PROTO_OUT)/clients/python/dhashmap_client/_pb/kv_pb2_grpc.py
	cp proto/dhashmap/v1/kv.proto $(PROTO_OUT)/clients/js/proto/dhashmap/v1/kv.proto

## proto-check: fail, listing the files, when the committed generated code is not what `make proto`
##              makes from proto/ now (generates into a scratch directory; the tree is not touched)
proto-check: $(STAMP)
	@scratch="$$(mktemp -d)" && trap 'rm -rf "$$scratch"' EXIT && \
	  $(MAKE) --no-print-directory -s proto PROTO_OUT="$$scratch" >/dev/null && \
	  tools/proto-check.sh "$$scratch"

clean:
	rm -rf $(VENV) data build dist *.egg-info clients/python/*.egg-info twisted/plugins/dropin.cache
	find . -name __pycache__ -prune -exec rm -rf {} +
