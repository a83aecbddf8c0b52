//go:build !unix

package upstream

import "net"

// peerOpen cannot peek without blocking here; a stale connection is caught by RoundTrip's
// replay of safe requests instead.
func peerOpen(net.Conn) bool { return true }
