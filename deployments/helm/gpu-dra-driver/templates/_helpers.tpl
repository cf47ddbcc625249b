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
