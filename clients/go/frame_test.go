package dhashmap

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"errors"
	"strings"
	"testing"
	"testing/iotest"

	pb "github.com/dhashmap/dhashmap/clients/go/dhashmappb"
)

func unhex(t *testing.T, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(strings.ReplaceAll(s, " ", ""))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// The worked example of docs/protocol.md, byte for byte.
func TestWorkedExampleClientHello(t *testing.T) {
	got, err := encodeFrame(clientHello("dhashmap", ""))
	if err != nil {
		t.Fatal(err)
	}
	want := unhex(t, "00000010 120e 0803 1208 6468617368 6d6170 2002")
	if !bytes.Equal(got, want) {
		t.Fatalf("client Hello\n got %x\nwant %x", got, want)
	}
}

func TestWorkedExampleGet(t *testing.T) {
	got, err := encodeFrame(&pb.Frame{Id: 1, Body: &pb.Frame_Get{Get: &pb.Get{Key: []byte("k")}}})
	if err != nil {
		t.Fatal(err)
	}
	if want := unhex(t, "00000008 0801 a20103 0a016b"); !bytes.Equal(got, want) {
		t.Fatalf("Get\n got %x\nwant %x", got, want)
	}
}

func TestWorkedExamplePreconditionFailed(t *testing.T) {
	wire := unhex(t, "0000000d 0802 1a09 0805 120573746 16c65")
	frame, err := readFrame(bufio.NewReader(iotest.OneByteReader(bytes.NewReader(wire))), DefaultMaxFrame)
	if err != nil {
		t.Fatal(err)
	}
	if frame.GetId() != 2 || frame.GetError().GetCode() != pb.ErrorCode_ERROR_CODE_PRECONDITION_FAILED {
		t.Fatalf("decoded %v", frame)
	}
	err = requestError(frame.GetError())
	var e *Error
	if !errors.Is(err, ErrPreconditionFailed) || !errors.As(err, &e) || e.Message != "stale" || e.Code != "precondition_failed" {
		t.Fatalf("mapped to %#v", err)
	}
}

func TestWorkedExampleGetResult(t *testing.T) {
	// The doc elides the token; this one is as long as the doc's (31 bytes).
	token := "AaIXI8_IAAABAm4xAAAAAAAAAAEAAAE"[:31]
	frame := &pb.Frame{Id: 1, Body: &pb.Frame_GetResult{GetResult: &pb.GetResult{Found: true, Value: []byte("v"), Version: token}}}
	data, err := encodeFrame(frame)
	if err != nil {
		t.Fatal(err)
	}
	if prefix := unhex(t, "0000002b 0801 aa0126 0801 120176 1a1f"); !bytes.HasPrefix(data, prefix) {
		t.Fatalf("GetResult\n got %x\nwant prefix %x", data, prefix)
	}
}

// Frames fed one byte at a time come out whole, in order, and a clean end between
// frames is io.EOF.
func TestReadFrameByteAtATime(t *testing.T) {
	var wire []byte
	for i := uint64(1); i <= 3; i++ {
		var err error
		wire, err = appendFrame(wire, &pb.Frame{Id: i, Body: &pb.Frame_Ping{Ping: &pb.Ping{SentAtMs: i * 10}}})
		if err != nil {
			t.Fatal(err)
		}
	}
	r := bufio.NewReader(iotest.OneByteReader(bytes.NewReader(wire)))
	for i := uint64(1); i <= 3; i++ {
		frame, err := readFrame(r, DefaultMaxFrame)
		if err != nil {
			t.Fatal(err)
		}
		if frame.GetId() != i || frame.GetPing().GetSentAtMs() != i*10 {
			t.Fatalf("frame %d: %v", i, frame)
		}
	}
	if _, err := readFrame(r, DefaultMaxFrame); err == nil || err.Error() != "EOF" {
		t.Fatalf("after the last frame: %v", err)
	}
}

// A length over the limit is refused from the prefix alone, before any payload.
func TestReadFrameOverLimit(t *testing.T) {
	r := bufio.NewReader(bytes.NewReader(unhex(t, "00000401")))
	_, err := readFrame(r, 1024)
	var e *Error
	if !errors.As(err, &e) || !errors.Is(err, ErrConnection) || e.Code != "bad_frame" {
		t.Fatalf("got %v", err)
	}
}

func TestReadFrameTruncatedAndUndecodable(t *testing.T) {
	if _, err := readFrame(bufio.NewReader(bytes.NewReader(unhex(t, "00000005 0801"))), 100); err == nil || err.Error() != "unexpected EOF" {
		t.Fatalf("truncated: %v", err)
	}
	_, err := readFrame(bufio.NewReader(bytes.NewReader(unhex(t, "00000002 ffff"))), 100)
	if !errors.Is(err, ErrConnection) {
		t.Fatalf("undecodable: %v", err)
	}
}

func TestCheckHello(t *testing.T) {
	ok := &pb.Frame{Body: &pb.Frame_Hello{Hello: &pb.Hello{ProtocolVersion: protocolVersion, Cluster: "dhashmap", NodeId: "n1"}}}
	if h, err := checkHello(ok, "dhashmap"); err != nil || h.GetNodeId() != "n1" {
		t.Fatalf("compatible Hello: %v %v", h, err)
	}
	for _, tc := range []struct {
		frame *pb.Frame
		code  string
	}{
		{ok, "cluster_mismatch"}, // checked against another name below
		{&pb.Frame{Body: &pb.Frame_Hello{Hello: &pb.Hello{ProtocolVersion: protocolVersion + 1, Cluster: "other"}}}, "version_mismatch"},
		{&pb.Frame{Body: &pb.Frame_Error{Error: &pb.Error{Code: pb.ErrorCode_ERROR_CODE_CLUSTER_MISMATCH}}}, "cluster_mismatch"},
	} {
		_, err := checkHello(tc.frame, "other")
		var h *HandshakeError
		if !errors.As(err, &h) || h.Code != tc.code {
			t.Errorf("%v: got %v, want HandshakeError %s", tc.frame, err, tc.code)
		}
	}
	_, err := checkHello(&pb.Frame{Body: &pb.Frame_Ping{Ping: &pb.Ping{}}}, "dhashmap")
	if !errors.Is(err, ErrConnection) {
		t.Fatalf("a Ping first: %v", err)
	}
}

func TestNotServed(t *testing.T) {
	pong := notServed(&pb.Frame{Id: 7, Body: &pb.Frame_Ping{Ping: &pb.Ping{SentAtMs: 42}}})
	if pong.GetId() != 7 || pong.GetPong().GetSentAtMs() != 42 {
		t.Fatalf("Ping answered with %v", pong)
	}
	refused := notServed(&pb.Frame{Id: 8, Body: &pb.Frame_ReplicaGet{ReplicaGet: &pb.ReplicaGet{}}})
	if refused.GetId() != 8 || refused.GetError().GetCode() != pb.ErrorCode_ERROR_CODE_INVALID_REQUEST {
		t.Fatalf("ReplicaGet answered with %v", refused)
	}
	if a := notServed(&pb.Frame{Id: 9, Body: &pb.Frame_GetResult{GetResult: &pb.GetResult{}}}); a != nil {
		t.Fatalf("a result answered with %v", a)
	}
}
