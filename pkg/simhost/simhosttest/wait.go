package simhosttest

import (
	"net"
	"testing"
	"time"
)

// WaitFor polls cond every 20ms until it holds, and fails the test when it
// does not within bound, with what and the last state cond reported.
func WaitFor(t testing.TB, what string, bound time.Duration, cond func() (ok bool, last string)) {
	t.Helper()
	deadline := time.Now().Add(bound)
	for {
		ok, last := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v; last: %s", what, bound, last)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// FreePorts returns n TCP ports of 127.0.0.1 free now, for a simulated
// daemon to listen on (a race with other processes for them is unlikely).
func FreePorts(t testing.TB, n int) []int {
	t.Helper()
	ports := make([]int, n)
	for i := range ports {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ports[i] = ln.Addr().(*net.TCPAddr).Port
		ln.Close()
	}
	return ports
}
