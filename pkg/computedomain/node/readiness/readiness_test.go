package readiness

import (
	"context"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/klog/v2/ktesting"

	"github.com/gpu-dra/gpu-dra-driver/pkg/names"
)

func pod(name, ns, nodeName, domain string, ready bool) *corev1.Pod {
	status := corev1.ConditionFalse
	if ready {
		status = corev1.ConditionTrue
	}
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: map[string]string{names.ComputeDomainLabel: domain}},
		Spec:       corev1.PodSpec{NodeName: nodeName},
		Status:     corev1.PodStatus{Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: status}}},
	}
}

func TestWait(t *testing.T) {
	tests := []struct {
		name    string
		pods    []*corev1.Pod
		later   *corev1.Pod // created after the wait began
		wantErr string
	}{
		{name: "ready pod", pods: []*corev1.Pod{pod("d", "drv", "node-1", "uid-a", true)}},
		{name: "becomes ready", pods: []*corev1.Pod{pod("d", "drv", "node-1", "uid-a", false)}, later: pod("d2", "drv", "node-1", "uid-a", true)},
		{name: "not ready", pods: []*corev1.Pod{pod("d", "drv", "node-1", "uid-a", false)}, wantErr: "daemon pod drv/d is not Ready"},
		{name: "no pod", wantErr: "no daemon pod on the node yet"},
		{name: "other domain", pods: []*corev1.Pod{pod("d", "drv", "node-1", "uid-b", true)}, wantErr: "no daemon pod"},
		{name: "other namespace", pods: []*corev1.Pod{pod("d", "tenant", "node-1", "uid-a", true)}, wantErr: "no daemon pod"},
		{name: "other node", pods: []*corev1.Pod{pod("d", "drv", "node-2", "uid-a", true)}, wantErr: "not Ready"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, ctx := ktesting.NewTestContext(t)
			ctx, cancel := context.WithCancel(ctx)
			defer cancel()
			client := fake.NewClientset()
			for _, p := range tt.pods {
				if _, err := client.CoreV1().Pods(p.Namespace).Create(ctx, p, metav1.CreateOptions{}); err != nil {
					t.Fatal(err)
				}
			}
			w := New(Options{Client: client, NodeName: "node-1", Namespace: "drv", PollInterval: 10 * time.Millisecond})
			if err := w.Start(ctx); err != nil {
				t.Fatal(err)
			}
			defer w.Shutdown()
			if tt.later != nil {
				go func() {
					time.Sleep(50 * time.Millisecond)
					_, _ = client.CoreV1().Pods(tt.later.Namespace).Create(ctx, tt.later, metav1.CreateOptions{})
				}()
			}
			// A Ready pod ends the wait at once, so the cases that expect one
			// get a bound no loaded machine misses; the others wait it out.
			bound := 300 * time.Millisecond
			if tt.wantErr == "" {
				bound = 20 * time.Second
			}
			start := time.Now()
			err := w.Wait(ctx, "uid-a", bound)
			if elapsed := time.Since(start); elapsed > bound+time.Second {
				t.Errorf("Wait took %s, bound %s", elapsed, bound)
			}
			if tt.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !strings.Contains(err.Error(), "not ready after 300ms") {
				t.Fatalf("error %v, want %q", err, tt.wantErr)
			}
		})
	}
}
