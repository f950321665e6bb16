{{/*
Names, labels, images, secrets and the pieces every pod shares.
*/}}

{{/* The chart name, truncated to 63 characters. */}}
{{- define "tasklane.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The release's fully qualified name, truncated to 63 characters (DNS label). */}}
{{- define "tasklane.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The name of one component's objects: <fullname>-<component>, at most 63 characters. */}}
{{- define "tasklane.componentName" -}}
{{- printf "%s-%s" (include "tasklane.fullname" .root) .component | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Selector labels of one component. Args: root, component. */}}
{{- define "tasklane.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tasklane.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* Standard labels of one component. Args: root, component. */}}
{{- define "tasklane.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "tasklane.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: tasklane
{{- end -}}

{{/* An image reference from the images map. Args: root, key. By digest when one is given. */}}
{{- define "tasklane.image" -}}
{{- $image := index .root.Values.images .key -}}
{{- include "tasklane.imageRef" (dict "image" $image "defaultTag" .root.Chart.AppVersion) -}}
{{- end -}}

{{/*
An image reference from one image map (repository, tag, digest). Args: image, defaultTag.
A missing map renders (badly) rather than failing, so check-values.yaml can say what is wrong.
*/}}
{{- define "tasklane.imageRef" -}}
{{- $image := .image | default dict -}}
{{- if $image.digest -}}
{{- printf "%s@%s" $image.repository $image.digest -}}
{{- else -}}
{{- printf "%s:%s" (default "" $image.repository) (default .defaultTag $image.tag) -}}
{{- end -}}
{{- end -}}

{{/* The broker Secret's name: an existing Secret, or the one the chart creates for demos. */}}
{{- define "tasklane.brokerSecretName" -}}
{{- if .Values.broker.create.enabled -}}
{{- printf "%s-broker" (include "tasklane.fullname" .) -}}
{{- else -}}
{{- .Values.broker.existingSecret -}}
{{- end -}}
{{- end -}}

{{/* The Secret KEDA authenticates with: its own, else the broker Secret. */}}
{{- define "tasklane.kedaSecretName" -}}
{{- default (include "tasklane.brokerSecretName" .) .Values.autoscaling.keda.authentication.existingSecret -}}
{{- end -}}

{{/* The ServiceAccount every pod runs as. */}}
{{- define "tasklane.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "tasklane.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The contract registry's queues, generated from tasklane.contracts (files/contracts.json). */}}
{{- define "tasklane.contracts" -}}
{{- .Files.Get "files/contracts.json" -}}
{{- end -}}

{{/* Deep-merge .src into the map .dst in place; unlike sprig's merge, false and 0 override. */}}
{{- define "tasklane.mergeInto" -}}
{{- $dst := .dst -}}
{{- range $key, $value := .src -}}
{{- if and (kindIs "map" $value) (kindIs "map" (index $dst $key)) -}}
{{- include "tasklane.mergeInto" (dict "dst" (index $dst $key) "src" $value) -}}
{{- else -}}
{{- $_ := set $dst $key $value -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
A pool's settings as JSON: workers.defaults overlaid with the pool's own keys, its image and
queues defaulted, the longest hard time limit of its queues and its grace period. Args: root, name.
*/}}
{{- define "tasklane.pool" -}}
{{- $pool := index .root.Values.workers.pools .name -}}
{{- $merged := deepCopy .root.Values.workers.defaults -}}
{{- include "tasklane.mergeInto" (dict "dst" $merged "src" (deepCopy $pool)) -}}
{{- $contracts := include "tasklane.contracts" .root | fromJson -}}
{{- $_ := set $merged "name" .name -}}
{{- $_ := set $merged "service" (default "" $merged.service) -}}
{{- if not $merged.image -}}
{{- $_ := set $merged "image" $merged.service -}}
{{- end -}}
{{- if not (hasKey $merged "queues") -}}
{{- $_ := set $merged "queues" (get $contracts.services $merged.service | default list) -}}
{{- end -}}
{{- $longest := 0.0 -}}
{{- range $merged.queues -}}
{{- $limit := float64 (get (get $contracts.queues . | default dict) "timeLimit" | default 0) -}}
{{- if gt $limit $longest -}}{{- $longest = $limit -}}{{- end -}}
{{- end -}}
{{- $_ := set $merged "longestTimeLimit" $longest -}}
{{- if not $merged.shutdownTimeout -}}
{{- $_ := set $merged "shutdownTimeout" (int (ceil $longest)) -}}
{{- end -}}
{{- if not $merged.terminationGracePeriodSeconds -}}
{{- $_ := set $merged "terminationGracePeriodSeconds" (add (int $merged.shutdownTimeout) (int $merged.gracePeriodMargin)) -}}
{{- end -}}
{{- toJson $merged -}}
{{- end -}}

{{/* A queue's name on the broker: TASKLANE_NAMESPACE prefixed. Args: root, queue. */}}
{{- define "tasklane.brokerQueue" -}}
{{- printf "%s%s" .root.Values.tasklane.namespace .queue -}}
{{- end -}}

{{/* Pod security context: non-root uid/gid 10001 (the images' user), seccomp RuntimeDefault. */}}
{{- define "tasklane.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.security.runAsUser }}
runAsGroup: {{ .Values.security.runAsGroup }}
fsGroup: {{ .Values.security.runAsGroup }}
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Container security context: read-only root, no privilege escalation, no capabilities. */}}
{{- define "tasklane.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.security.runAsUser }}
runAsGroup: {{ .Values.security.runAsGroup }}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
privileged: false
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Pod-level fields every Tasklane pod shares. */}}
{{- define "tasklane.podCommon" -}}
serviceAccountName: {{ include "tasklane.serviceAccountName" . }}
automountServiceAccountToken: false
enableServiceLinks: false
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- include "tasklane.podSecurityContext" . | nindent 2 }}
{{- end -}}

{{/* The writable /tmp every container gets (the root filesystem is read-only). */}}
{{- define "tasklane.tmpVolume" -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ .Values.security.tmpSizeLimit }}
{{- end -}}

{{/* Where a worker's pool processes write their metric files (a volume of its own, in memory). */}}
{{- define "tasklane.metricFilesPath" -}}
/run/tasklane/metrics
{{- end -}}

{{- define "tasklane.tmpVolumeMount" -}}
- name: tmp
  mountPath: /tmp
{{- end -}}

{{/*
The environment every Tasklane process reads: broker and result backend from the broker Secret
(never a ConfigMap), namespace, logs, metrics port, OTel and extra settings.
Args: root, otelService (OTEL_SERVICE_NAME), metrics (bool).
*/}}
{{- define "tasklane.env" -}}
{{- $root := .root -}}
- name: TASKLANE_BROKER_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "tasklane.brokerSecretName" $root }}
      key: {{ $root.Values.broker.urlKey }}
{{- if $root.Values.broker.resultBackendKey }}
- name: TASKLANE_RESULT_BACKEND
  valueFrom:
    secretKeyRef:
      name: {{ include "tasklane.brokerSecretName" $root }}
      key: {{ $root.Values.broker.resultBackendKey }}
      {{- if eq $root.Values.broker.kind "redis" }}
      # Optional on Redis: the result backend defaults to the broker.
      optional: true
      {{- end }}
{{- end }}
- name: TASKLANE_NAMESPACE
  value: {{ $root.Values.tasklane.namespace | quote }}
{{- if and (eq $root.Values.broker.kind "redis") $root.Values.broker.redisSentinel.master }}
- name: TASKLANE_REDIS_SENTINEL_MASTER
  value: {{ $root.Values.broker.redisSentinel.master | quote }}
{{- if $root.Values.broker.redisSentinel.passwordKey }}
- name: TASKLANE_REDIS_SENTINEL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "tasklane.brokerSecretName" $root }}
      key: {{ $root.Values.broker.redisSentinel.passwordKey }}
{{- end }}
{{- end }}
{{- if and (eq $root.Values.broker.kind "redis") $root.Values.broker.redisSentinel.waitReplicas }}
- name: TASKLANE_REDIS_WAIT_REPLICAS
  value: {{ $root.Values.broker.redisSentinel.waitReplicas | quote }}
{{- end }}
{{- if eq $root.Values.broker.kind "rabbitmq" }}
- name: TASKLANE_RABBITMQ_QUEUE_TYPE
  value: {{ $root.Values.broker.rabbitmq.queueType | quote }}
- name: TASKLANE_RABBITMQ_DELIVERY_LIMIT
  value: {{ $root.Values.broker.rabbitmq.deliveryLimit | quote }}
{{- end }}
- name: TASKLANE_LOG_FORMAT
  value: {{ $root.Values.tasklane.logFormat | quote }}
- name: TASKLANE_TIMEZONE
  value: {{ $root.Values.tasklane.timezone | quote }}
- name: TASKLANE_TASK_EVENTS
  value: {{ $root.Values.tasklane.taskEvents | quote }}
{{- if .metrics }}
- name: TASKLANE_METRICS_PORT
  value: {{ $root.Values.tasklane.metricsPort | quote }}
{{- end }}
{{- if $root.Values.otel.enabled }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ required "otel.endpoint is required when otel.enabled" $root.Values.otel.endpoint | quote }}
- name: OTEL_SERVICE_NAME
  value: {{ .otelService | quote }}
- name: OTEL_RESOURCE_ATTRIBUTES
  value: {{ printf "k8s.namespace.name=%s,service.namespace=%s" $root.Release.Namespace $root.Release.Name | quote }}
{{- range $name, $value := $root.Values.otel.env }}
- name: {{ $name }}
  value: {{ $value | quote }}
{{- end }}
{{- else }}
- name: OTEL_SDK_DISABLED
  value: "true"
{{- end }}
{{- range $name, $value := $root.Values.tasklane.env }}
- name: {{ $name }}
  value: {{ $value | quote }}
{{- end }}
{{- end -}}

{{/*
A NetworkPolicy body shared by every component: DNS and the broker always; metrics ingress when
the component serves them. Args: root, component, metrics (bool), ingress (list of rules),
egress (list of extra rules), internetPorts (list of ports reachable outside private ranges).
*/}}
{{- define "tasklane.networkPolicy" -}}
{{- $root := .root -}}
{{- $np := $root.Values.networkPolicy -}}
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: {{ include "tasklane.componentName" . }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "tasklane.labels" . | nindent 4 }}
spec:
  podSelector:
    matchLabels:
      {{- include "tasklane.selectorLabels" . | nindent 6 }}
  policyTypes:
    - Ingress
    - Egress
  ingress:
    {{- if .metrics }}
    - from:
        {{- toYaml $np.metricsFrom | nindent 8 }}
      ports:
        - protocol: TCP
          port: {{ $root.Values.tasklane.metricsPort }}
    {{- end }}
    {{- with .ingress }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  egress:
    # DNS.
    - to:
        {{- toYaml $np.dns.to | nindent 8 }}
      ports:
        - protocol: UDP
          port: 53
        - protocol: TCP
          port: 53
    # The broker, result backend and state Redis.
    - {{- with $np.broker.to }}
      to:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      ports:
        {{- range $np.broker.ports }}
        - protocol: TCP
          port: {{ . }}
        {{- end }}
    {{- if .internetPorts }}
    # The public internet only: cluster, private and metadata ranges refused (defence in depth
    # behind the application's own SSRF guard).
    - to:
        - ipBlock:
            cidr: 0.0.0.0/0
            except:
              {{- toYaml $np.privateRanges.ipv4 | nindent 14 }}
        - ipBlock:
            cidr: ::/0
            except:
              {{- toYaml $np.privateRanges.ipv6 | nindent 14 }}
      ports:
        {{- range .internetPorts }}
        - protocol: TCP
          port: {{ . }}
        {{- end }}
    {{- end }}
    {{- with .egress }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
{{- end -}}
