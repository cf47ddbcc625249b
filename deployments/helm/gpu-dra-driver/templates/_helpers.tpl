{{/* Name and labels shared by every object of the chart. */}}
{{- define "gpu-dra-driver.name" -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{- define "gpu-dra-driver.labels" -}}
app.kubernetes.io/name: gpu-dra-driver
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "gpu-dra-driver.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "gpu-dra-driver.webhookService" -}}
{{ include "gpu-dra-driver.name" . }}-webhook
{{- end -}}

{{/*
The webhook's matchConditions: only an object with configuration for
gpu.nvidia.com is sent to it (and a DeviceClass update only when its
configuration changed), so other drivers' claims and classes never depend
on its availability. Kept in step with deployments/webhook.
*/}}
{{- define "gpu-dra-driver.webhookMatchConditions" -}}
matchConditions:
- name: has-gpu-nvidia-com-config
  expression: >-
    (request.resource.resource == 'deviceclasses' ?
      (has(object.spec.config) ? object.spec.config : []) :
    request.resource.resource == 'resourceclaimtemplates' ?
      (has(object.spec.spec.devices) && has(object.spec.spec.devices.config) ? object.spec.spec.devices.config : []) :
      (has(object.spec.devices) && has(object.spec.devices.config) ? object.spec.devices.config : [])
    ).exists(c, has(c.opaque) && c.opaque.driver == 'gpu.nvidia.com')
- name: config-changed
  expression: >-
    request.operation != 'UPDATE' || !has(oldObject.spec.config) || object.spec.config != oldObject.spec.config
{{- end -}}

{{/* The user name of every node's kubelet plugin: its ServiceAccount's. */}}
{{- define "gpu-dra-driver.pluginUser" -}}
system:serviceaccount:{{ .Release.Namespace }}:{{ include "gpu-dra-driver.name" . }}-kubelet-plugin
{{- end -}}

{{/*
The variable nodeName of a policy on the plugin's identity: the node its
service-account token names, or "" for a token bound to no pod's node.
*/}}
{{- define "gpu-dra-driver.pluginNodeNameVariable" -}}
- name: nodeName
  expression: >-
    has(request.userInfo.extra) && 'authentication.kubernetes.io/node-name' in request.userInfo.extra ?
    request.userInfo.extra['authentication.kubernetes.io/node-name'][0] : ''
{{- end -}}

{{/*
A toleration t tolerates a taint of the driver: one of its keys
(gpu.nvidia.com/<health condition>, gpu.nvidia.com/maintenance; pkg/names,
HealthTaintKeyPrefix and MaintenanceTaintKey), or every key (no key:
operator Exists).
*/}}
{{- define "gpu-dra-driver.toleratesDriverTaint" -}}
(!has(t.key) || t.key == '' || t.key.startsWith('gpu.nvidia.com/'))
{{- end -}}

{{/* The priority class of the MPS control daemons' pods. */}}
{{- define "gpu-dra-driver.mpsDaemonPriorityClass" -}}
{{- .Values.kubeletPlugin.mps.priorityClassName | default (printf "%s-mps-daemon" (include "gpu-dra-driver.name" .)) -}}
{{- end -}}

{{/*
The requests and limits of the MPS control daemons' pods; the defaults also
hold for the values of a release from before they were values (helm upgrade
--reuse-values).
*/}}
{{- define "gpu-dra-driver.mpsDaemonCPU" -}}
{{- dig "cpu" "250m" (.Values.kubeletPlugin.mps.daemonResources | default dict) | toString -}}
{{- end -}}
{{- define "gpu-dra-driver.mpsDaemonMemory" -}}
{{- dig "memory" "512Mi" (.Values.kubeletPlugin.mps.daemonResources | default dict) | toString -}}
{{- end -}}

{{/*
The plugin's --node-allocatable-overhead: KIND:RESOURCE=QUANTITY pairs from
kubeletPlugin.nodeAllocatableOverhead, share defaulting to the MPS daemon
pods' resources (when daemons run in pods); empty when it is off, or for the
values of a release from before it was a value.
*/}}
{{- define "gpu-dra-driver.nodeAllocatableOverhead" -}}
{{- $o := .Values.kubeletPlugin.nodeAllocatableOverhead | default dict -}}
{{- $items := list -}}
{{- if eq (toString $o.enabled) "true" -}}
{{- range $kind := list "gpu" "mig" "share" -}}
{{- $r := get $o $kind | default dict -}}
{{- if and (eq $kind "share") (not $r) $.Values.kubeletPlugin.mps.daemonPods -}}
{{- $r = dict "cpu" (include "gpu-dra-driver.mpsDaemonCPU" $) "memory" (include "gpu-dra-driver.mpsDaemonMemory" $) -}}
{{- end -}}
{{- range $res := keys $r | sortAlpha -}}
{{- if not (has $res (list "cpu" "memory")) -}}
{{- fail (printf "kubeletPlugin.nodeAllocatableOverhead.%s: %q is neither cpu nor memory" $kind $res) -}}
{{- end -}}
{{- $q := get $r $res | toString -}}
{{- if or (not (regexMatch "^[0-9]+(\\.[0-9]+)?(m|k|M|G|T|Ki|Mi|Gi|Ti)?$" $q)) (regexMatch "^0*(\\.0*)?[a-zA-Z]*$" $q) -}}
{{- fail (printf "kubeletPlugin.nodeAllocatableOverhead.%s.%s: %q is not a positive quantity (250m, 512Mi)" $kind $res $q) -}}
{{- end -}}
{{- $items = append $items (printf "%s:%s=%s" $kind $res $q) -}}
{{- end -}}
{{- end -}}
{{- if not $items -}}
{{- fail "kubeletPlugin.nodeAllocatableOverhead.enabled: no kind has an overhead (gpu, mig or share, each {cpu, memory}; share defaults to mps.daemonResources when mps.daemonPods is on)" -}}
{{- end -}}
{{- end -}}
{{- join "," $items -}}
{{- end -}}

{{/*
The share overhead per resource that the MPS daemon pods' requests are
lowered by, "0" where none: what the admission policy of the daemon pods
allows below their limits.
*/}}
{{- define "gpu-dra-driver.shareOverhead" -}}
{{- $res := .res -}}
{{- $q := "0" -}}
{{- range $item := splitList "," (include "gpu-dra-driver.nodeAllocatableOverhead" .root) -}}
{{- if hasPrefix (printf "share:%s=" $res) $item -}}{{- $q = trimPrefix (printf "share:%s=" $res) $item -}}{{- end -}}
{{- end -}}
{{- $q -}}
{{- end -}}

{{/*
"true" when GPUs are offered for VMs: vfioPassthrough.enabled, or NVIDIA's
feature gate PassthroughSupport; "" otherwise.
*/}}
{{- define "gpu-dra-driver.vfio" -}}
{{- if or (dig "enabled" false (.Values.vfioPassthrough | default dict)) (get (.Values.featureGates | default dict) "PassthroughSupport") -}}true{{- end -}}
{{- end -}}
