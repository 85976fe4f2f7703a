{{/*
Chart name, truncated to the 63 characters a Kubernetes name allows.
*/}}
{{- define "tidings.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified app name. If the release name already contains the chart name it is used as is.
*/}}
{{- define "tidings.fullname" -}}
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

{{- define "tidings.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "tidings.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tidings.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "tidings.labels" -}}
helm.sh/chart: {{ include "tidings.chart" . }}
{{ include "tidings.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "tidings.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "tidings.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The image: repository@digest when a digest is given, else repository:tag (the tag defaults to appVersion).
*/}}
{{- define "tidings.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
The application's name: the relay publishes to <app>.events.
*/}}
{{- define "tidings.app" -}}
{{- default .Values.store.schema .Values.app.name }}
{{- end }}

{{- define "tidings.configName" -}}
{{- include "tidings.fullname" . }}-config
{{- end }}

{{/*
Labels of one component (relay, worker group, migrations): the selector labels plus the component.
Call with (dict "root" $ "component" "relay").
*/}}
{{- define "tidings.componentSelectorLabels" -}}
{{ include "tidings.selectorLabels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "tidings.componentLabels" -}}
{{ include "tidings.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/*
The environment every long-running tidings container shares: the ConfigMap (store, Kafka, logging) and
the secrets, referenced by key so that no credential is ever in the chart's values or manifests.
*/}}
{{- define "tidings.env" -}}
- name: DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.database.existingSecret }}
      key: {{ .Values.database.urlKey }}
{{- if .Values.kafka.sasl.existingSecret }}
- name: TIDINGS_KAFKA_SASL_USERNAME
  valueFrom:
    secretKeyRef:
      name: {{ .Values.kafka.sasl.existingSecret }}
      key: {{ .Values.kafka.sasl.usernameKey }}
- name: TIDINGS_KAFKA_SASL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .Values.kafka.sasl.existingSecret }}
      key: {{ .Values.kafka.sasl.passwordKey }}
{{- end }}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
{{- with .Values.env }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "tidings.envFrom" -}}
- configMapRef:
    name: {{ include "tidings.configName" . }}
{{- with .Values.envFrom }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "tidings.volumeMounts" -}}
# The root filesystem is read-only; /tmp is the one writable scratch directory.
- name: tmp
  mountPath: /tmp
{{- if .Values.kafka.tls.existingSecret }}
- name: kafka-tls
  mountPath: /etc/tidings/kafka-tls
  readOnly: true
{{- end }}
{{- end }}

{{- define "tidings.volumes" -}}
- name: tmp
  emptyDir:
    sizeLimit: 64Mi
{{- if .Values.kafka.tls.existingSecret }}
- name: kafka-tls
  secret:
    secretName: {{ .Values.kafka.tls.existingSecret }}
    defaultMode: 0440
{{- end }}
{{- end }}

{{/*
Where a pod runs and with which identity, for the relay and every worker group.
Call with (dict "root" $ "component" "relay").
*/}}
{{- define "tidings.podScheduling" -}}
{{- $root := .root -}}
serviceAccountName: {{ include "tidings.serviceAccountName" $root }}
automountServiceAccountToken: false
{{- with $root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $root.Values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
securityContext:
  {{- toYaml $root.Values.podSecurityContext | nindent 2 }}
{{- with $root.Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $root.Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
affinity:
{{- if $root.Values.affinity }}
  {{- toYaml $root.Values.affinity | nindent 2 }}
{{- else }}
  # Replicas prefer different nodes, so that one node's loss leaves a relay leader or standby and part
  # of every consumer group running.
  podAntiAffinity:
    preferredDuringSchedulingIgnoredDuringExecution:
      - weight: 100
        podAffinityTerm:
          topologyKey: kubernetes.io/hostname
          labelSelector:
            matchLabels:
              {{- include "tidings.componentSelectorLabels" . | nindent 14 }}
{{- end }}
{{- with $root.Values.topologySpreadConstraints }}
topologySpreadConstraints:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/*
A worker group's settings: workerDefaults overlaid with the group's own.
Call with (dict "root" $ "worker" $worker); returns YAML to be read with fromYaml.
*/}}
{{- define "tidings.worker" -}}
{{- $merged := mustMergeOverwrite (deepCopy .root.Values.workerDefaults) (deepCopy .worker) -}}
{{- toYaml $merged }}
{{- end }}

{{/*
The session-mode URL every leadership takes its advisory lock through (relays, repartitioning relays,
global-order handlers), for the containers that elect leaders: `tidings relay` and `tidings worker`.
*/}}
{{- define "tidings.leaderUrlEnv" -}}
{{- if .Values.database.leaderUrlKey }}
- name: TIDINGS_LEADER_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.database.existingSecret }}
      key: {{ .Values.database.leaderUrlKey }}
{{- end }}
{{- end }}
