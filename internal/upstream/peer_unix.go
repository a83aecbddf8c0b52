//go:build unix

package upstream

import (
	"net"
	"syscall"
)

// peerOpen reports whether an idle connection is still usable: a non-blocking peek finds
// neither the peer's FIN (a read of 0 bytes) nor an error. Data waiting on an idle HTTP/1.1
// connection is a protocol error, so that counts as unusable too.
func peerOpen(c net.Conn) bool {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return true
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	open := true
	err = rc.Read(func(fd uintptr) bool {
		var b [1]byte
		n, _, rerr := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		switch {
		case rerr == syscall.EAGAIN || rerr == syscall.EWOULDBLOCK:
			open = true // nothing to read: the normal idle state
		case rerr != nil, n == 0, n > 0:
			open = false
		}
		return true // never wait for readiness
	})
	return err == nil && open
}
