package command

import (
	"bytes"
	"strings"
	"testing"

	"github.com/spf13/cobra"

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
