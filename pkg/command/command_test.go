package command

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"

	"github.com/spf13/cobra"
	"k8s.io/klog/v2/ktesting"

	"github.com/gpu-dra/gpu-dra-driver/pkg/version"
)

// TestRootCommand: a root command with klog's flags and the version
// subcommand takes klog's flags before and after a subcommand, prints the
// release, and refuses arguments to version.
func TestRootCommand(t *testing.T) {
	for _, tc := range []struct {
		name    string
		args    []string
		want    string
		wantErr bool
	}{
		{name: "version", args: []string{"version"}, want: version.Get() + "\n"},
		{name: "klog flag before the subcommand", args: []string{"-v=4", "version"}, want: version.Get() + "\n"},
		{name: "klog flag after it", args: []string{"version", "--vmodule=x=2"}, want: version.Get() + "\n"},
		{name: "an argument to version", args: []string{"version", "x"}, wantErr: true},
		{name: "not a flag", args: []string{"--no-such-flag", "version"}, wantErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := &cobra.Command{Use: "cmd", SilenceUsage: true, SilenceErrors: true}
			AddKlogFlags(root.PersistentFlags())
			root.AddCommand(Version("Print the release"))
			var out bytes.Buffer
			root.SetOut(&out)
			root.SetArgs(tc.args)
			err := root.Execute()
			if (err != nil) != tc.wantErr {
				t.Fatalf("error %v, want one: %v", err, tc.wantErr)
			}
			if !tc.wantErr && out.String() != tc.want {
				t.Errorf("printed %q, want %q", out.String(), tc.want)
			}
			if f := root.PersistentFlags().Lookup("v"); f == nil || !strings.Contains(f.Usage, "log level") {
				t.Errorf("klog's -v: %v", f)
			}
		})
	}
}

// TestCrashAfter runs this test binary as the process to kill: it passes
// steps a, b and c with the hook of CRASH_AFTER_AT, and is killed by
// SIGKILL right after that step, before it prints it, or never.
func TestCrashAfter(t *testing.T) {
	if at := os.Getenv("CRASH_AFTER_AT"); at != "" {
		hook := CrashAfter(ktesting.NewLogger(t, ktesting.NewConfig()), at)
		for _, s := range []string{"a", "b", "c"} {
			hook(s)
			fmt.Println("passed", s)
		}
		os.Exit(0)
	}
	for _, tc := range []struct {
		at, want string
		killed   bool
	}{
		{at: "b", want: "passed a\n", killed: true},
		{at: "a", want: "", killed: true},
		{at: "none", want: "passed a\npassed b\npassed c\n"},
	} {
		t.Run(tc.at, func(t *testing.T) {
			cmd := exec.Command(os.Args[0], "-test.run=^TestCrashAfter$")
			cmd.Env = append(os.Environ(), "CRASH_AFTER_AT="+tc.at)
			out, err := cmd.Output()
			var exit *exec.ExitError
			killed := errors.As(err, &exit) && exit.Sys().(syscall.WaitStatus).Signal() == syscall.SIGKILL
			if killed != tc.killed || (!tc.killed && err != nil) {
				t.Errorf("exit %v, want killed %v", err, tc.killed)
			}
			if string(out) != tc.want {
				t.Errorf("printed %q, want %q", out, tc.want)
			}
		})
	}
}
