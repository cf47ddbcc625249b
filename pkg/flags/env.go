// Package flags gives every command-line flag an environment twin, so that
// a DaemonSet can configure the driver through env as well as args.
package flags

import (
	"fmt"
	"os"
	"strings"

	"github.com/spf13/pflag"
)

// EnvName is the environment variable that sets flag name: GPU_DRA_ and the
// name in upper case with underscores, except for the names Kubernetes
// tooling already uses (NODE_NAME, KUBECONFIG).
func EnvName(name string) string {
	switch name {
	case "node-name":
		return "NODE_NAME"
	case "kubeconfig":
		return "KUBECONFIG"
	}
	return "GPU_DRA_" + strings.ToUpper(strings.ReplaceAll(name, "-", "_"))
}

// ApplyEnv sets every flag not given on the command line from its
// environment twin, and adds the twin's name to the flag's usage. Call it
// after parsing. A bad value names both the variable and the flag.
func ApplyEnv(fs *pflag.FlagSet) error {
	var err error
	fs.VisitAll(func(f *pflag.Flag) {
		if err != nil || f.Changed {
			return
		}
		env := EnvName(f.Name)
		if v, ok := os.LookupEnv(env); ok {
			if serr := fs.Set(f.Name, v); serr != nil {
				err = fmt.Errorf("environment variable %s (flag --%s): %w", env, f.Name, serr)
			}
		}
	})
	return err
}

// DocumentEnv appends each flag's environment twin to its usage text.
func DocumentEnv(fs *pflag.FlagSet) {
	fs.VisitAll(func(f *pflag.Flag) {
		f.Usage = fmt.Sprintf("%s [env %s]", f.Usage, EnvName(f.Name))
	})
}
