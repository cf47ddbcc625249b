package kubectlgpu

import (
	"context"
	"reflect"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"

	statusv1 "github.com/gpu-dra/gpu-dra-driver/api/status/v1"
	"github.com/gpu-dra/gpu-dra-driver/pkg/names"
)

// hostile is text a writer of an API object chose for the admin's
// terminal: a CSI sequence that clears the screen, an OSC sequence that
// sets the window title (and, in some terminals, writes the clipboard),
// C1 CSI, a carriage return and a newline that forge a line, BEL, and a
// right-to-left override that reorders what follows it.
const hostile = "\x1b[2J\x1b]52;c;cm0gLXJmIC8K\x07\u009b31m\rforged\nline\u202eevil"

// raw are the characters none of kubectl gpu's output may hold.
var raw = []string{"\x1b", "\x07", "\u009b", "\r", "\u202e", "forged\nline"}

func checkPrintable(t *testing.T, what, out string) {
	t.Helper()
	for _, r := range raw {
		if strings.Contains(out, r) {
			t.Errorf("%s prints %q raw:\n%s", what, r, out)
		}
	}
	if !strings.Contains(out, `\x1b[2J`) || !strings.Contains(out, `\u202e`) {
		t.Errorf("%s does not show the escaped control characters visibly:\n%s", what, out)
	}
}

// pluginEvent is an Event as the node plugin records it about GPU minor.
func pluginEvent(name, node string, minor int, reason, what string) *corev1.Event {
	return &corev1.Event{
		ObjectMeta:     metav1.ObjectMeta{Name: name, Namespace: metav1.NamespaceDefault},
		InvolvedObject: corev1.ObjectReference{Kind: "Node", Name: node, APIVersion: "v1"},
		Type:           corev1.EventTypeWarning, Reason: reason, Message: names.GPUEventMessage(minor, what),
		Source:        corev1.EventSource{Component: names.PluginEventSource, Host: node},
		LastTimestamp: metav1.NewTime(t0.Add(-3 * 60e9)), Count: 1,
	}
}

// TestDescribeEventsArePrintedSafely: kubectl gpu describe prints the
// plugin's Events about the GPU with every control character escaped, and
// shows no Event of another writer as the GPU's health history (however
// much it looks like one).
func TestDescribeEventsArePrintedSafely(t *testing.T) {
	s := nodeSlices()
	objs := []runtime.Object{&s[0], &s[1], &s[2],
		&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-a"}},
		pluginEvent("ours", "node-a", 3, names.EventHealthTaintAdded, "health taint "+hostile),
	}
	forged := pluginEvent("other-component", "node-a", 3, names.EventHealthTaintRemoved, "health taint gpu.nvidia.com/xid=79:NoExecute removed (forged by another component)")
	forged.Source = corev1.EventSource{Component: "someone-else"}
	otherNS := pluginEvent("other-namespace", "node-a", 3, names.EventHealthTaintRemoved, "health taint removed (forged in a tenant's namespace)")
	otherNS.Namespace = "tenant"
	otherHost := pluginEvent("other-host", "node-a", 3, names.EventHealthTaintRemoved, "health taint removed (forged by another node's plugin)")
	otherHost.Source.Host = "node-b"
	otherReason := pluginEvent("other-reason", "node-a", 3, "CheckpointCorrupt", "not a health event")
	objs = append(objs, forged, otherNS, otherHost, otherReason)
	a, out, errOut := testApp(fake.NewClientset(objs...))
	if code := a.execute(context.Background(), []string{"describe", "node-a/gpu-3"}); code != exitOK {
		t.Fatalf("describe: exit %d: %s", code, errOut)
	}
	checkPrintable(t, "describe's Events", out.String())
	for _, forged := range []string{"forged by another component", "forged in a tenant", "forged by another node", "not a health event"} {
		if strings.Contains(out.String(), forged) {
			t.Errorf("describe shows an Event that is not the plugin's health Event (%s):\n%s", forged, out)
		}
	}
}

// TestReportStringsArePrintedSafely: the free-form strings kubectl gpu
// prints from ResourceSlices, ResourceClaims and DeviceTaintRules (a
// device attribute, a condition's message, the plugin's status data, a
// rule's eviction message) reach the terminal escaped, in every output.
func TestReportStringsArePrintedSafely(t *testing.T) {
	d := gpuDevice(3)
	d.Attributes[resourceapi.QualifiedName(names.AttrProductName)] = resourceapi.DeviceAttribute{StringValue: ptr("H100 " + hostile)}
	slices := []resourceapi.ResourceSlice{slice("a-0", "node-a", d)}
	c := claim("team", "train", "node-a", []string{"gpu-3"}, "pod-a:uid-a")
	raw, err := statusv1.Encode(statusv1.DeviceStatus{Type: names.TypeGPU, GPU: statusv1.GPU{UUID: "GPU-0003", ProductName: hostile},
		CDIDeviceIDs: []string{"k8s.gpu.nvidia.com/claim=" + hostile}})
	if err != nil {
		t.Fatal(err)
	}
	c.Status.Devices = []resourceapi.AllocatedDeviceStatus{{Driver: names.DriverName, Pool: "node-a", Device: "gpu-3",
		Conditions: []metav1.Condition{{Type: statusv1.ConditionReady, Status: metav1.ConditionFalse, Reason: "Failed", Message: hostile,
			LastTransitionTime: metav1.NewTime(t0)}},
		Data: &runtime.RawExtension{Raw: raw}}}
	rule := foreignRule("maint", "node-a", "gpu-3")
	rule.Status.Conditions = []metav1.Condition{{Type: resourceapi.DeviceTaintConditionEvictionInProgress, Status: metav1.ConditionTrue,
		Reason: "x", Message: hostile, LastTransitionTime: metav1.NewTime(t0)}}
	client := fakeClient(t, slices, []resourceapi.ResourceClaim{c}, []resourceapi.DeviceTaintRule{rule},
		[]corev1.Pod{pod("team", "pod-a", "uid-a", corev1.PodRunning)})
	for _, args := range [][]string{
		{"describe", "node-a/gpu-3"},
		{"ls", "node-a", "-o", "wide"},
		{"ls", "node-a", "-o", "yaml"},
		{"ls", "node-a", "-o", "json"},
	} {
		a, out, errOut := testApp(client)
		if code := a.execute(context.Background(), args); code != exitOK {
			t.Fatalf("%v: exit %d: %s", args, code, errOut)
		}
		checkPrintable(t, strings.Join(args, " "), out.String())
	}
}

// TestReportHasNoMapsOrInterfaces: sanitizeReport rewrites strings in
// structs, pointers and slices; a map or an interface in the report would
// be printed as the API returned it.
func TestReportHasNoMapsOrInterfaces(t *testing.T) {
	seen := map[reflect.Type]bool{}
	var walk func(path string, typ reflect.Type)
	walk = func(path string, typ reflect.Type) {
		if seen[typ] {
			return
		}
		seen[typ] = true
		switch typ.Kind() {
		case reflect.Map, reflect.Interface:
			t.Errorf("%s is a %s, which sanitizeStrings does not rewrite", path, typ.Kind())
		case reflect.Pointer, reflect.Slice, reflect.Array:
			walk(path+"[]", typ.Elem())
		case reflect.Struct:
			for i := range typ.NumField() {
				if f := typ.Field(i); f.IsExported() {
					walk(path+"."+f.Name, f.Type)
				}
			}
		default:
		}
	}
	walk("Report", reflect.TypeFor[Report]())
}

func TestPrintable(t *testing.T) {
	for in, want := range map[string]string{
		"gpu-3: health taint added": "gpu-3: health taint added",
		`C:\path ünïcödé 日本`:        `C:\path ünïcödé 日本`,
		"\x1b[31mred":               `\x1b[31mred`,
		"a\tb\nc\rd\x7f":            `a\x09b\x0ac\x0dd\x7f`,
		"\u009b1m \u202eevil\u2066": `\u009b1m \u202eevil\u2066`,
		"zero\u200bwidth\ufeff":     `zero\u200bwidth\ufeff`,
		"bad \xff byte":             `bad \xff byte`,
		"tag \U000e0041":            `tag \U000e0041`,
	} {
		if got := printable(in); got != want {
			t.Errorf("printable(%q) = %q, want %q", in, got, want)
		}
		if again := printable(printable(in)); again != printable(in) {
			t.Errorf("printable is not idempotent on %q: %q", in, again)
		}
	}
}
