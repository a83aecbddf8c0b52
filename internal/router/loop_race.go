//go:build race

package router

import (
	"os"
	"syscall"
)

// The race detector takes the standard library's socket reads and writes (package syscall's)
// as synchronization, but not gnet's, which go through golang.org/x/sys/unix and its own
// marker: a goroutine that wrote a value and then a request to the loop would seem to race with
// the loop that reads the value on that request. In race builds the loop marks its reads and
// writes on syscall's marker too, with an empty read and write of /dev/null (no cost otherwise).
var raceNull = func() int {
	f, err := os.OpenFile(os.DevNull, os.O_RDWR, 0)
	if err != nil {
		return -1
	}
	return int(f.Fd())
}()

func raceAcquireIO() { _, _ = syscall.Read(raceNull, nil) }
func raceReleaseIO() { _, _ = syscall.Write(raceNull, nil) }
