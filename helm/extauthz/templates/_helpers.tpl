{{/* Names and labels shared by every template. */}}

{{- define "extauthz.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "extauthz.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "extauthz.selectorLabels" -}}
app.kubernetes.io/name: {{ include "extauthz.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "extauthz.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "extauthz.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: authorizer
{{- end }}

{{- define "extauthz.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "extauthz.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "extauthz.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* Where the ConfigMap is mounted; config.yaml and the `files` live here. */}}
{{- define "extauthz.configDir" -}}/etc/extauthz/config{{- end }}

{{/* The gRPC listener: all interfaces for a shared Service, loopback only as a sidecar. */}}
{{- define "extauthz.grpcListen" -}}
{{- if eq .Values.deploymentMode "sidecar" -}}
127.0.0.1:{{ .Values.server.grpcPort }}
{{- else -}}
0.0.0.0:{{ .Values.server.grpcPort }}
{{- end }}
{{- end }}

{{/* The example policy and files, used only while `config` is empty. */}}
{{- define "extauthz.example" -}}
{{- .Files.Get "files/example-policy.yaml" }}
{{- end }}

{{- define "extauthz.policy" -}}
{{- if .Values.config }}
{{- toYaml .Values.config }}
{{- else }}
{{- toYaml (fromYaml (include "extauthz.example" .)).config }}
{{- end }}
{{- end }}

{{/* The files next to config.yaml: the example's while `config` is empty, then `files`. */}}
{{- define "extauthz.files" -}}
{{- $files := dict }}
{{- if not .Values.config }}
{{- $files = (fromYaml (include "extauthz.example" .)).files }}
{{- end }}
{{- toYaml (merge (deepCopy .Values.files) $files) }}
{{- end }}

{{/* The extauthz config file: the policy, with the server section set here. */}}
{{- define "extauthz.configYaml" -}}
{{- if hasKey .Values.config "server" }}
{{- fail "config.server is set by the chart (from `server` and `deploymentMode`): remove it from config" }}
{{- end }}
{{- $server := dict "grpc_listen" (include "extauthz.grpcListen" .) "http_listen" (printf "0.0.0.0:%d" (int .Values.server.httpPort)) "shutdown_grace" (printf "%ds" (int .Values.server.shutdownGraceSeconds)) }}
{{- $server = merge $server (deepCopy .Values.server.extraSettings) }}
{{- $config := merge (dict "server" $server) (fromYaml (include "extauthz.policy" .)) }}
{{- toYaml $config }}
{{- end }}

{{/*
The extauthz container, used by the Deployment and, in sidecar mode, rendered into a
ConfigMap for users to add to their own pods: one definition for both.
*/}}
{{- define "extauthz.container" -}}
name: extauthz
image: {{ include "extauthz.image" . }}
imagePullPolicy: {{ .Values.image.pullPolicy }}
args:
  - --config
  - {{ include "extauthz.configDir" . }}/config.yaml
  {{- if gt (int (.Values.server.workers | default 1)) 1 }}
  - --workers
  - {{ .Values.server.workers | quote }}
  {{- end }}
ports:
  - name: grpc
    containerPort: {{ .Values.server.grpcPort }}
    protocol: TCP
  - name: http-metrics
    containerPort: {{ .Values.server.httpPort }}
    protocol: TCP
{{- with .Values.extraEnv }}
env:
  {{- toYaml . | nindent 2 }}
{{- end }}
# Kubernetes' own gRPC probe asks grpc.health.v1.Health, which extauthz serves on the
# ext_authz port: NOT_SERVING until config, keys and a first feed are loaded, and again
# once SIGTERM starts the drain.
startupProbe:
  grpc:
    port: {{ .Values.server.grpcPort }}
  periodSeconds: {{ .Values.probes.startup.periodSeconds }}
  failureThreshold: {{ .Values.probes.startup.failureThreshold }}
livenessProbe:
  grpc:
    port: {{ .Values.server.grpcPort }}
  periodSeconds: {{ .Values.probes.liveness.periodSeconds }}
  timeoutSeconds: {{ .Values.probes.liveness.timeoutSeconds }}
  failureThreshold: {{ .Values.probes.liveness.failureThreshold }}
readinessProbe:
  grpc:
    port: {{ .Values.server.grpcPort }}
    service: envoy.service.auth.v3.Authorization
  periodSeconds: {{ .Values.probes.readiness.periodSeconds }}
  timeoutSeconds: {{ .Values.probes.readiness.timeoutSeconds }}
  failureThreshold: {{ .Values.probes.readiness.failureThreshold }}
{{- if gt (int .Values.server.preStopSleepSeconds) 0 }}
lifecycle:
  # Keep serving while endpoints are withdrawn; only then does SIGTERM start the drain.
  preStop:
    sleep:
      seconds: {{ .Values.server.preStopSleepSeconds }}
{{- end }}
securityContext:
  runAsNonRoot: true
  runAsUser: 10001
  runAsGroup: 10001
  allowPrivilegeEscalation: false
  readOnlyRootFilesystem: true
  privileged: false
  capabilities:
    drop: ["ALL"]
  seccompProfile:
    type: RuntimeDefault
resources:
  {{- toYaml .Values.resources | nindent 2 }}
volumeMounts:
  - name: config
    mountPath: {{ include "extauthz.configDir" . }}
    readOnly: true
  {{- if .Values.credentials.existingSecret }}
  - name: credentials
    mountPath: {{ .Values.credentials.mountPath }}
    readOnly: true
  {{- end }}
  # The root filesystem is read-only; Python's tempfile gets a small scratch space here.
  - name: tmp
    mountPath: /tmp
  {{- with .Values.extraVolumeMounts }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end }}

{{/* The pod volumes behind the container's mounts. */}}
{{- define "extauthz.volumes" -}}
- name: config
  configMap:
    name: {{ include "extauthz.fullname" . }}
{{- if .Values.credentials.existingSecret }}
- name: credentials
  secret:
    secretName: {{ .Values.credentials.existingSecret }}
    defaultMode: 0440
{{- end }}
- name: tmp
  emptyDir:
    medium: Memory
    sizeLimit: 16Mi
{{- with .Values.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end }}
