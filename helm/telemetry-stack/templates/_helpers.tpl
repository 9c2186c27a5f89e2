{{/* Name of a component's resources: namePrefix + component. Call with (dict "root" $ "component" "api"). */}}
{{- define "ts.name" -}}
{{- printf "%s%s" .root.Values.namePrefix .component | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "ts.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Selector labels of a component. */}}
{{- define "ts.selectorLabels" -}}
app.kubernetes.io/name: telemetry-stack
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* All labels of a component's resources. */}}
{{- define "ts.labels" -}}
{{ include "ts.selectorLabels" . }}
app.kubernetes.io/part-of: telemetry-stack
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ include "ts.chart" .root }}
{{- end -}}

{{/* The auth Secret's name: the seed's <release>-telemetry-stack-auth, or the existing one. */}}
{{- define "ts.secretName" -}}
{{- if .Values.secrets.enabled -}}
{{- printf "%s-telemetry-stack-auth" .Release.Name -}}
{{- else -}}
{{- required "secrets.existingSecret is required when secrets.enabled is false: name a Secret with keys api-key and service-token" .Values.secrets.existingSecret -}}
{{- end -}}
{{- end -}}

{{/* Image of one of our components. */}}
{{- define "ts.image" -}}
{{- $img := .root.Values.image -}}
{{- $tag := default .root.Chart.AppVersion $img.tag -}}
{{- if $img.registry -}}
{{- printf "%s/%s/%s:%s" $img.registry $img.repository .component $tag -}}
{{- else -}}
{{- printf "%s/%s:%s" $img.repository .component $tag -}}
{{- end -}}
{{- end -}}

{{/* Kafka bootstrap servers: the external ones, or the bundled msg-queue Service. */}}
{{- define "ts.brokers" -}}
{{- if .Values.msgQueue.external.bootstrapServers -}}
{{- .Values.msgQueue.external.bootstrapServers -}}
{{- else -}}
{{- printf "%s.%s.svc.%s:9092" (include "ts.name" (dict "root" . "component" "msg-queue")) .Release.Namespace .Values.clusterDomain -}}
{{- end -}}
{{- end -}}

{{/* Replication factor of the topics: the value, or min(3, brokers) bundled, 3 external. */}}
{{- define "ts.topicReplication" -}}
{{- $r := int .Values.topics.replication -}}
{{- $brokers := int .Values.msgQueue.replicas -}}
{{- if gt $r 0 -}}
{{- if and (include "ts.bundledKafka" .) (gt $r $brokers) -}}
{{- fail (printf "topics.replication %d exceeds msgQueue.replicas %d" $r $brokers) -}}
{{- end -}}
{{- if and (include "ts.bundledKafka" .) (lt $r (min 2 $brokers | int)) -}}
{{- fail (printf "topics.replication %d is below the bundled broker's min.insync.replicas %d: producing with acks=all would fail" $r (min 2 $brokers)) -}}
{{- end -}}
{{- $r -}}
{{- else if include "ts.bundledKafka" . -}}
{{- min 3 $brokers -}}
{{- else -}}
3
{{- end -}}
{{- end -}}

{{- define "ts.bundledKafka" -}}
{{- if not .Values.msgQueue.external.bootstrapServers -}}true{{- end -}}
{{- end -}}

{{/* "true" when the bundled brokers require SASL/PLAIN (msgQueue.sasl.enabled). */}}
{{- define "ts.kafkaSasl" -}}
{{- if and (include "ts.bundledKafka" .) .Values.msgQueue.sasl.enabled -}}true{{- end -}}
{{- end -}}

{{/* The Secret holding the bundled brokers' SASL passwords. */}}
{{- define "ts.kafkaSecretName" -}}
{{- printf "%s-telemetry-stack-kafka" .Release.Name -}}
{{- end -}}

{{/*
KAFKA_PROPERTIES of a Kafka client component. Call with (dict "root" $ "user" "collector").
Bundled brokers with SASL: PLAIN as that user, its password from the Kafka Secret (expanded
by the kubelet from the variable before it). External with clientSecret: that Secret's key.
*/}}
{{- define "ts.kafkaClientEnv" -}}
{{- if include "ts.kafkaSasl" .root }}
- name: KAFKA_SASL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "ts.kafkaSecretName" .root }}
      key: {{ printf "%s-password" .user }}
- name: KAFKA_PROPERTIES
  value: {{ printf "security.protocol=SASL_PLAINTEXT\nsasl.mechanisms=PLAIN\nsasl.username=%s\nsasl.password=$(KAFKA_SASL_PASSWORD)" .user | quote }}
{{- else if and (not (include "ts.bundledKafka" .root)) .root.Values.msgQueue.external.clientSecret }}
- name: KAFKA_PROPERTIES
  valueFrom:
    secretKeyRef:
      name: {{ .root.Values.msgQueue.external.clientSecret }}
      key: {{ .user }}
{{- end }}
{{- end -}}

{{/*
Pod annotation that rolls pods when the chart-managed secret changes. Computed from the
values only: generated values never change (they are looked up and kept), so an empty value
hashes the same on every render; an existing Secret is not the chart's to watch.
*/}}
{{- define "ts.secretChecksum" -}}
{{- if .Values.secrets.enabled -}}
checksum/secret: {{ printf "%s\n%s" .Values.secrets.apiKey .Values.secrets.serviceToken | sha256sum }}
{{- end -}}
{{- end -}}

{{/* "true" when pods read the Secret through the Kubernetes API (secrets.source). */}}
{{- define "ts.secretsFromApi" -}}
{{- $source := .Values.secrets.source | default "mount" -}}
{{- if not (has $source (list "mount" "kubernetes")) -}}
{{- fail (printf "secrets.source is %q: use mount (the Secret mounted as files) or kubernetes (read and watched through the Kubernetes API)" $source) -}}
{{- end -}}
{{- if eq $source "kubernetes" -}}true{{- end -}}
{{- end -}}

{{/*
How a pod gets the Secret. Call with (dict "root" $ "keys" (list "api-key" "service-token")),
plus "mount" true to mount whatever secrets.source says (the collector). mount: env vars from
the Secret and the mounted directory. kubernetes: the Secret's name; the values come from
the API.
*/}}
{{- define "ts.secretEnv" -}}
{{- $name := include "ts.secretName" .root -}}
{{- if and (include "ts.secretsFromApi" .root) (not .mount) }}
- name: SECRET_SOURCE
  value: kubernetes
- name: SECRET_NAME
  value: {{ $name | quote }}
- name: SECRET_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
{{- else }}
{{- range .keys }}
- name: {{ . | upper | replace "-" "_" }}
  valueFrom:
    secretKeyRef:
      name: {{ $name }}
      key: {{ . }}
{{- end }}
- name: SECRET_DIR
  value: {{ .root.Values.secrets.mountPath | quote }}
{{- end }}
- name: SECRET_RELOAD_INTERVAL
  value: {{ .root.Values.rotation.reloadInterval | quote }}
- name: SECRET_GRACE_PERIOD
  value: {{ .root.Values.rotation.gracePeriod | quote }}
- name: SECRET_SIGNING_DELAY
  value: {{ .root.Values.rotation.signingDelay | quote }}
{{- end -}}

{{/* The Secret as a read-only directory holding only `keys`. */}}
{{/*
The Secret as a read-only directory holding only `keys`, plus `optionalKeys` when the Secret
has them (a projected volume, so both land in one directory).
*/}}
{{- define "ts.secretVolume" -}}
{{- if or .mount (not (include "ts.secretsFromApi" .root)) }}
- name: auth
  projected:
    defaultMode: 0440
    sources:
      - secret:
          name: {{ include "ts.secretName" .root }}
          items:
{{- range .keys }}
            - key: {{ . }}
              path: {{ . }}
{{- end }}
{{- if .optionalKeys }}
      - secret:
          name: {{ include "ts.secretName" .root }}
          optional: true
          items:
{{- range .optionalKeys }}
            - key: {{ . }}
              path: {{ . }}
{{- end }}
{{- end }}
{{- end }}
{{- end -}}

{{- define "ts.secretMount" -}}
{{- if not (include "ts.secretsFromApi" .) }}
- name: auth
  mountPath: {{ .Values.secrets.mountPath }}
  readOnly: true
{{- end }}
{{- end -}}

{{/* A service-account token only for pods that read the Secret through the API. */}}
{{- define "ts.automountToken" -}}
{{- if include "ts.secretsFromApi" . }}true{{ else }}false{{ end -}}
{{- end -}}

{{/* Egress to the Kubernetes API server (secrets.source=kubernetes). */}}
{{- define "ts.egressApiServer" -}}
{{- if include "ts.secretsFromApi" . }}
- {{- with .Values.networkPolicy.apiServerTo }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  ports:
    {{- range .Values.networkPolicy.apiServerPorts }}
    - port: {{ . }}
      protocol: TCP
    {{- end }}
{{- end }}
{{- end -}}

{{/* Values that look like the docs' examples must not reach a cluster. */}}
{{- define "ts.checkSecretValue" -}}
{{- $v := .value -}}
{{- if $v -}}
{{- $placeholders := list "your-secure-api-key-here" "your-secure-service-token-here" "your-secure-api-key" "your-secure-service-token" "new-secure-api-key" "new-secure-service-token" "new-api-key" "new-service-token" "changeme" "change-me" -}}
{{- if has $v $placeholders -}}
{{- fail (printf "secrets.%s is the placeholder %q from the docs: set a real value (openssl rand -hex 32) or leave it empty to generate one" .key $v) -}}
{{- end -}}
{{- if lt (len $v) 16 -}}
{{- fail (printf "secrets.%s is %d characters: use at least 16 (openssl rand -hex 32), or leave it empty to generate one" .key (len $v)) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "ts.serviceAccountName" -}}
{{- if .root.Values.serviceAccount.create -}}
{{- include "ts.name" . -}}
{{- else -}}
default
{{- end -}}
{{- end -}}

{{- /* Egress every component needs: DNS. */}}
{{- define "ts.egressDns" -}}
- to:
    {{- toYaml .Values.networkPolicy.dnsTo | nindent 4 }}
  ports:
    - port: 53
      protocol: UDP
    - port: 53
      protocol: TCP
{{- end }}
{{- /* Egress to Kafka: the bundled brokers, or the external cluster (its peers, or any
address, on its ports). */}}
{{- define "ts.egressKafka" -}}
{{- if include "ts.bundledKafka" . }}
- to:
    - podSelector:
        matchLabels:
          {{- include "ts.selectorLabels" (dict "root" . "component" "msg-queue") | nindent 10 }}
  ports:
    - port: 9092
      protocol: TCP
{{- else }}
- {{- with .Values.networkPolicy.kafkaTo }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  ports:
    {{- range .Values.networkPolicy.kafkaPorts }}
    - port: {{ . }}
      protocol: TCP
    {{- end }}
{{- end }}
{{- end }}

{{/* Whether the history is remote (VictoriaMetrics): streamers keep none, any number run. */}}
{{- define "ts.remoteHistory" -}}
{{- if eq .Values.history.backend "victoriametrics" }}true{{ end }}
{{- end }}

{{/* The in-chart VictoriaMetrics single node is deployed. */}}
{{- define "ts.bundledVictoriametrics" -}}
{{- if and (eq .Values.history.backend "victoriametrics") .Values.history.victoriametrics.deploy.enabled }}true{{ end }}
{{- end }}

{{/* VictoriaMetrics's base URL: the one given, or the in-chart one's Service (checked: one of them). */}}
{{- define "ts.victoriametricsUrl" -}}
{{- $h := .Values.history.victoriametrics -}}
{{- if $h.url -}}
{{- $h.url -}}
{{- else if include "ts.bundledVictoriametrics" . -}}
{{- printf "http://%s:8428" (include "ts.name" (dict "root" . "component" "victoriametrics")) -}}
{{- else -}}
{{- fail "history.backend victoriametrics needs history.victoriametrics.url (http://…, the base URL of VictoriaMetrics) or history.victoriametrics.deploy.enabled" -}}
{{- end -}}
{{- end }}

{{/* The streamer's history settings as env vars (checked: victoriametrics needs a URL). */}}
{{- define "ts.historyEnv" -}}
{{- $h := .Values.history -}}
- name: HISTORY_BACKEND
  value: {{ $h.backend | quote }}
{{- if eq $h.backend "victoriametrics" }}
- name: VICTORIAMETRICS_URL
  value: {{ include "ts.victoriametricsUrl" . | quote }}
{{- with $h.victoriametrics.readUrl }}
- name: VICTORIAMETRICS_READ_URL
  value: {{ . | quote }}
{{- end }}
{{- with $h.victoriametrics.headersSecret }}
{{- if .name }}
- name: VICTORIAMETRICS_HEADERS
  valueFrom:
    secretKeyRef:
      name: {{ .name | quote }}
      key: {{ .key | quote }}
{{- end }}
{{- end }}
{{- if $h.victoriametrics.caConfigMap.name }}
- name: VICTORIAMETRICS_CA_FILE
  value: /etc/telemetry-stack/victoriametrics-ca/{{ $h.victoriametrics.caConfigMap.key }}
{{- end }}
{{- with $h.victoriametrics.bearerTokenSecret }}
{{- if .name }}
- name: VICTORIAMETRICS_BEARER_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ .name | quote }}
      key: {{ .key | quote }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/* Egress to VictoriaMetrics (history.backend victoriametrics). */}}
{{- define "ts.egressHistory" -}}
{{- $inChart := and (include "ts.bundledVictoriametrics" .) (not .Values.history.victoriametrics.url) }}
{{- if $inChart }}
- to:
    - podSelector:
        matchLabels:
          {{- include "ts.selectorLabels" (dict "root" . "component" "victoriametrics") | nindent 10 }}
  ports:
    - port: 8428
      protocol: TCP
{{- end }}
{{- /* An endpoint outside the release: the url, or a readUrl beside the in-chart one. */}}
{{- if and (eq .Values.history.backend "victoriametrics") (or (not $inChart) .Values.history.victoriametrics.readUrl) }}
- {{- with .Values.networkPolicy.historyTo }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  ports:
    {{- range .Values.networkPolicy.historyPorts }}
    - port: {{ . }}
      protocol: TCP
    {{- end }}
{{- end }}
{{- end }}
