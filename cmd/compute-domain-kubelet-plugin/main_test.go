package main

import (
	"strings"
	"testing"
	"time"
)

func TestValidate(t *testing.T) {
	ok := options{nodeName: "n", namespace: "drv", readinessWait: time.Second}
	tests := []struct {
		name    string
		change  func(o *options)
		wantErr string
	}{
		{name: "ok", change: func(*options) {}},
		{name: "no node", change: func(o *options) { o.nodeName = "" }, wantErr: "--node-name"},
		{name: "no namespace", change: func(o *options) { o.namespace = "" }, wantErr: "GPU_DRA_NAMESPACE"},
		{name: "no wait", change: func(o *options) { o.readinessWait = 0 }, wantErr: "--readiness-wait"},
		{name: "bad crash step", change: func(o *options) { o.crashAt = "nowhere" }, wantErr: "--test-crash-at"},
		{name: "crash step", change: func(o *options) { o.crashAt = "cdi" }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := ok
			tt.change(&o)
			err := o.validate()
			if (err == nil) != (tt.wantErr == "") || (err != nil && !strings.Contains(err.Error(), tt.wantErr)) {
				t.Fatalf("validate() = %v, want %q", err, tt.wantErr)
			}
		})
	}
}
