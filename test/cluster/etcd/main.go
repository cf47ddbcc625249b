// Command etcd is the etcd server, built from the go.etcd.io/etcd/server/v3 module so the
// local-cluster harness needs only the Go module proxy. It lives in its own module (see go.mod)
// and is built by test/cluster/build.sh.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
