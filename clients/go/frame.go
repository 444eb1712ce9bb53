package dhashmap

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"

	pb "github.com/dhashmap/dhashmap/clients/go/dhashmappb"
	"google.golang.org/protobuf/proto"
)

// The native protocol's framing (docs/protocol.md): a 4-byte big-endian length,
// then that many bytes of one serialized Frame. No other header or padding.

const prefixSize = 4

// appendFrame appends frame, length prefix first, to buf.
func appendFrame(buf []byte, frame *pb.Frame) ([]byte, error) {
	start := len(buf)
	buf = append(buf, 0, 0, 0, 0)
	buf, err := proto.MarshalOptions{}.MarshalAppend(buf, frame)
	if err != nil {
		return buf[:start], err
	}
	n := len(buf) - start - prefixSize
	if uint64(n) > 1<<32-1 {
		return buf[:start], fmt.Errorf("a frame of %d bytes does not fit the 4-byte length", n)
	}
	binary.BigEndian.PutUint32(buf[start:], uint32(n))
	return buf, nil
}

// encodeFrame is one frame on the wire.
func encodeFrame(frame *pb.Frame) ([]byte, error) { return appendFrame(nil, frame) }

// readFrame reads one frame. A length over maxFrame is refused before its payload is
// read. The error is io.EOF only when the stream ended cleanly between frames.
func readFrame(r *bufio.Reader, maxFrame int) (*pb.Frame, error) {
	var prefix [prefixSize]byte
	if _, err := io.ReadFull(r, prefix[:]); err != nil {
		return nil, err
	}
	n := binary.BigEndian.Uint32(prefix[:])
	if uint64(n) > uint64(maxFrame) {
		return nil, &Error{Kind: ErrConnection, Code: "bad_frame",
			Message: fmt.Sprintf("the node sent a frame of %d bytes, over this client's limit of %d", n, maxFrame)}
	}
	payload := make([]byte, n)
	if _, err := io.ReadFull(r, payload); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	frame := &pb.Frame{}
	if err := proto.Unmarshal(payload, frame); err != nil {
		return nil, &Error{Kind: ErrConnection, Code: "bad_frame",
			Message: fmt.Sprintf("the node sent an undecodable frame: %v", err)}
	}
	return frame, nil
}

// clientHello is the client's Hello: id 0, the protocol version, the cluster it
// expects, ROLE_CLIENT, no node id.
func clientHello(cluster, software string) *pb.Frame {
	return &pb.Frame{Body: &pb.Frame_Hello{Hello: &pb.Hello{
		ProtocolVersion: protocolVersion,
		Cluster:         cluster,
		Role:            pb.Role_ROLE_CLIENT,
		SoftwareVersion: software,
	}}}
}

// checkHello checks the node's first frame. The node sends its Hello before it has
// read ours, so its Hello is no acceptance; but it refuses ours exactly when the
// version or the cluster differ, and both are in its Hello, so checking them here
// means a mismatch never fails a request halfway.
func checkHello(frame *pb.Frame, cluster string) (*pb.Hello, error) {
	switch body := frame.GetBody().(type) {
	case *pb.Frame_Error:
		return nil, connectionError(body.Error)
	case *pb.Frame_Hello:
		hello := body.Hello
		if hello.GetProtocolVersion() != protocolVersion {
			return nil, &HandshakeError{Code: "version_mismatch", Message: fmt.Sprintf(
				"the node speaks native protocol version %d; this client speaks %d",
				hello.GetProtocolVersion(), protocolVersion)}
		}
		if hello.GetCluster() != cluster {
			node := hello.GetNodeId()
			if node == "" {
				node = "?"
			}
			return nil, &HandshakeError{Code: "cluster_mismatch", Message: fmt.Sprintf(
				"the node %s belongs to cluster %q, not %q", node, hello.GetCluster(), cluster)}
		}
		return hello, nil
	default:
		return nil, &Error{Kind: ErrConnection, Code: "bad_frame",
			Message: fmt.Sprintf("the node's first frame is %T, not a Hello", body)}
	}
}

// notServed is what a client answers to a request from the node: a Pong for a
// Ping, an INVALID_REQUEST error for other requests, nil for frames that need
// no answer (results and errors that came too late, a Hello).
func notServed(frame *pb.Frame) *pb.Frame {
	switch body := frame.GetBody().(type) {
	case *pb.Frame_Ping:
		return &pb.Frame{Id: frame.GetId(), Body: &pb.Frame_Pong{Pong: &pb.Pong{SentAtMs: body.Ping.GetSentAtMs()}}}
	case *pb.Frame_ReplicaGet, *pb.Frame_ReplicaPut, *pb.Frame_ReplicaScan, *pb.Frame_Get, *pb.Frame_Put, *pb.Frame_Delete:
		return &pb.Frame{Id: frame.GetId(), Body: &pb.Frame_Error{Error: &pb.Error{
			Code:    pb.ErrorCode_ERROR_CODE_INVALID_REQUEST,
			Message: fmt.Sprintf("%T is not served by a client", body),
		}}}
	}
	return nil
}
