package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/uuid"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
	"k8s.io/client-go/tools/record"
	"k8s.io/klog/v2"

	"github.com/gpu-dra/gpu-dra-driver/pkg/computedomain/controller"
	"github.com/gpu-dra/gpu-dra-driver/pkg/computedomain/controller/templates"
	"github.com/gpu-dra/gpu-dra-driver/pkg/kubeclient"
	"github.com/gpu-dra/gpu-dra-driver/pkg/version"
)

// component names the controller in Events and as the Lease holder prefix.
const component = "compute-domain-controller"

// run starts the HTTP endpoint, then leads (or waits to lead) and
// reconciles while leading. Losing the lead ends the process with an
// error, so that the Deployment restarts it as a fresh candidate.
func run(ctx context.Context, opts *options) error {
	logger := klog.FromContext(ctx)
	cfg, err := kubeclient.Config(opts.kubeconfig, component+"/"+version.Get())
	if err != nil {
		return err
	}
	cfg.QPS, cfg.Burst = opts.kubeAPIQPS, opts.kubeAPIBurst
	kube, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return fmt.Errorf("kubernetes client: %w", err)
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return fmt.Errorf("dynamic client: %w", err)
	}

	broadcaster := record.NewBroadcaster(record.WithContext(ctx))
	broadcaster.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: kube.CoreV1().Events("")})
	defer broadcaster.Shutdown()
	recorder := broadcaster.NewRecorder(scheme.Scheme, corev1.EventSource{Component: component})

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	ctrl, err := controller.New(kube, dyn, controller.Options{
		Daemon: templates.DaemonOptions{
			Namespace:         opts.namespace,
			Image:             opts.image,
			PullPolicy:        corev1.PullPolicy(opts.imagePullPolicy),
			PriorityClassName: opts.priorityClass,
		},
		StatusMinInterval: opts.statusMinInterval,
		Workers:           opts.workers,
		Recorder:          recorder,
		Metrics:           controller.NewMetrics(reg),
		NetworkPolicy:     opts.networkPolicy,
	})
	if err != nil {
		return err
	}

	var watchdog *leaderelection.HealthzAdaptor
	if opts.leaderElect {
		watchdog = leaderelection.NewLeaderHealthzAdaptor(20 * time.Second)
	}
	if opts.httpEndpoint != "" {
		if err := serveHTTP(ctx, opts.httpEndpoint, reg, watchdog); err != nil {
			return err
		}
	}
	logger.Info("Starting", "version", version.Get(), "namespace", opts.namespace, "leaderElect", opts.leaderElect)

	if !opts.leaderElect {
		return ctrl.Run(ctx)
	}
	host, err := os.Hostname()
	if err != nil {
		return fmt.Errorf("hostname for the leader identity: %w", err)
	}
	lock := &resourcelock.LeaseLock{
		LeaseMeta:  metav1.ObjectMeta{Namespace: opts.namespace, Name: opts.leaseName},
		Client:     kube.CoordinationV1(),
		LockConfig: resourcelock.ResourceLockConfig{Identity: host + "_" + string(uuid.NewUUID()), EventRecorder: recorder},
	}
	runErr := make(chan error, 1)
	leaderCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	elector, err := leaderelection.NewLeaderElector(leaderelection.LeaderElectionConfig{
		Lock:            lock,
		LeaseDuration:   opts.leaseDuration,
		RenewDeadline:   opts.renewDeadline,
		RetryPeriod:     opts.retryPeriod,
		ReleaseOnCancel: true,
		Name:            opts.leaseName,
		WatchDog:        watchdog,
		Callbacks: leaderelection.LeaderCallbacks{
			OnStartedLeading: func(ctx context.Context) {
				logger.Info("Leading", "lease", klog.KRef(opts.namespace, opts.leaseName), "identity", lock.Identity())
				runErr <- ctrl.Run(ctx)
				cancel()
			},
			OnStoppedLeading: func() { logger.Info("Stopped leading", "identity", lock.Identity()) },
			OnNewLeader: func(identity string) {
				if identity != lock.Identity() {
					logger.Info("Another controller leads", "leader", identity)
				}
			},
		},
	})
	if err != nil {
		return fmt.Errorf("leader election: %w", err)
	}
	elector.Run(leaderCtx)
	if ctx.Err() != nil {
		return nil
	}
	select {
	case err := <-runErr:
		if err != nil {
			return err
		}
	default:
	}
	return errors.New("lost the leader election Lease; exiting so that a fresh candidate starts")
}

// serveHTTP serves /metrics and /healthz (failing when this candidate
// leads but stopped renewing its Lease) until ctx is done.
func serveHTTP(ctx context.Context, endpoint string, reg *prometheus.Registry, watchdog *leaderelection.HealthzAdaptor) error {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		if watchdog != nil {
			if err := watchdog.Check(r); err != nil {
				http.Error(w, err.Error(), http.StatusServiceUnavailable)
				return
			}
		}
		fmt.Fprintln(w, "ok")
	})
	ln, err := net.Listen("tcp", endpoint)
	if err != nil {
		return fmt.Errorf("listen on --http-endpoint %s: %w", endpoint, err)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(shutdown)
	}()
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			klog.FromContext(ctx).Error(err, "HTTP endpoint failed", "endpoint", endpoint)
		}
	}()
	klog.FromContext(ctx).Info("Serving metrics and health", "endpoint", ln.Addr().String())
	return nil
}
