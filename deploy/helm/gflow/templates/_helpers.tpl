{{/* Release-scoped name: "<release>-gflow", or the release name when it already says gflow. */}}
{{- define "gflow.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "gflow.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Selector of one component; call with (dict "root" $ "component" "fit"). */}}
{{- define "gflow.selectorLabels" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "gflow.authSecret" -}}
{{- .Values.auth.existingSecret | default (printf "%s-auth" (include "gflow.fullname" .)) -}}
{{- end -}}

{{/* The Secret with keys access-key and secret-key for the store. */}}
{{- define "gflow.s3Secret" -}}
{{- if .Values.minio.enabled -}}
{{- .Values.minio.existingSecret | default (printf "%s-s3" (include "gflow.fullname" .)) -}}
{{- else -}}
{{- required "store.external.existingSecret is required when minio.enabled is false" .Values.store.external.existingSecret -}}
{{- end -}}
{{- end -}}

{{- define "gflow.s3Endpoint" -}}
{{- if .Values.minio.enabled -}}
{{- printf "%s-minio.%s.svc.%s:9000" (include "gflow.fullname" .) .Release.Namespace .Values.clusterDomain -}}
{{- else -}}
{{- required "store.external.endpoint (host:port) is required when minio.enabled is false" .Values.store.external.endpoint -}}
{{- end -}}
{{- end -}}

{{- define "gflow.s3Secure" -}}
{{- if .Values.minio.enabled -}}0{{- else if .Values.store.external.secure -}}1{{- else -}}0{{- end -}}
{{- end -}}

{{/* gRPC target of a stage for the pipeline: every ready replica through its headless Service,
     balanced round-robin by the client. Call with (dict "root" $ "stage" "fit"). */}}
{{- define "gflow.stageTarget" -}}
{{- $stage := index .root.Values.stages .stage -}}
{{- printf "dns:///%s-%s-headless.%s.svc.%s:%d" (include "gflow.fullname" .root) .stage .root.Release.Namespace .root.Values.clusterDomain (int $stage.port) -}}
{{- end -}}
