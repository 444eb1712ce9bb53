module github.com/dhashmap/dhashmap/clients/go

go 1.26.8

require (
	github.com/cespare/xxhash/v2 v2.3.0
	google.golang.org/protobuf v1.36.12
)
