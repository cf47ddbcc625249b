package main

import (
	"context"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
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

func TestUninstalling(t *testing.T) {
	now := metav1.Now()
	tests := []struct {
		name string
		ds   *appsv1.DaemonSet
		want bool
	}{
		{name: "gone", want: true},
		{name: "present", ds: &appsv1.DaemonSet{ObjectMeta: metav1.ObjectMeta{Namespace: "drv", Name: "cd-plugin"}}},
		{name: "deleting", ds: &appsv1.DaemonSet{ObjectMeta: metav1.ObjectMeta{Namespace: "drv", Name: "cd-plugin", DeletionTimestamp: &now, Finalizers: []string{"x"}}}, want: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			client := fake.NewClientset()
			if tt.ds != nil {
				_, _ = client.AppsV1().DaemonSets("drv").Create(context.Background(), tt.ds, metav1.CreateOptions{})
			}
			o := &options{daemonSet: "drv/cd-plugin"}
			f, err := o.uninstalling(client)
			if err != nil {
				t.Fatal(err)
			}
			if got, err := f(context.Background()); err != nil || got != tt.want {
				t.Fatalf("uninstalling = %v, %v; want %v", got, err, tt.want)
			}
		})
	}
	if _, err := (&options{daemonSet: "nope"}).uninstalling(fake.NewClientset()); err == nil {
		t.Fatal("a --daemonset without namespace was accepted")
	}
}
