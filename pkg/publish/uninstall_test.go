package publish

import (
	"context"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
)

func TestUninstalling(t *testing.T) {
	now := metav1.Now()
	for _, tc := range []struct {
		name    string
		ref     string
		ds      *appsv1.DaemonSet
		want    bool
		wantNil bool // no --daemonset: never an uninstall
		wantErr bool
	}{
		{name: "no DaemonSet named", wantNil: true},
		{name: "gone", ref: "drv/plugin", want: true},
		{name: "present", ref: "drv/plugin", ds: &appsv1.DaemonSet{ObjectMeta: metav1.ObjectMeta{Namespace: "drv", Name: "plugin"}}},
		{name: "deleting", ref: "drv/plugin", want: true,
			ds: &appsv1.DaemonSet{ObjectMeta: metav1.ObjectMeta{Namespace: "drv", Name: "plugin", DeletionTimestamp: &now, Finalizers: []string{"x"}}}},
		{name: "another DaemonSet deleted", ref: "drv/plugin",
			ds: &appsv1.DaemonSet{ObjectMeta: metav1.ObjectMeta{Namespace: "drv", Name: "plugin"}}},
		{name: "no namespace", ref: "plugin", wantErr: true},
		{name: "empty name", ref: "drv/", wantErr: true},
		{name: "a slash too many", ref: "drv/plugin/x", wantErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			client := fake.NewClientset()
			if tc.ds != nil {
				if _, err := client.AppsV1().DaemonSets(tc.ds.Namespace).Create(context.Background(), tc.ds, metav1.CreateOptions{}); err != nil {
					t.Fatal(err)
				}
			}
			f, err := Uninstalling(client, tc.ref)
			switch {
			case tc.wantErr:
				if err == nil {
					t.Fatalf("DaemonSet %q was accepted", tc.ref)
				}
				return
			case err != nil:
				t.Fatal(err)
			case tc.wantNil:
				if f != nil {
					t.Fatal("a function without a DaemonSet")
				}
				return
			}
			if got, err := f(context.Background()); err != nil || got != tc.want {
				t.Errorf("uninstalling = %v, %v; want %v", got, err, tc.want)
			}
		})
	}
}
