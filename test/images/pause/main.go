// Command pause is the sandbox ("pause") container of the local test cluster: it does nothing
// but wait for SIGTERM or SIGINT, then exits 0. Built static by test/cluster/build.sh.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	<-sig
}
