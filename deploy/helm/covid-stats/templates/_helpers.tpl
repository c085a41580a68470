{{/* Names ----------------------------------------------------------------------------- */}}

{{- define "covid-stats.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "covid-stats.fullname" -}}
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

{{/* "<fullname>-<component>": include "covid-stats.componentName" (list $ "api") */}}
{{- define "covid-stats.componentName" -}}
{{- $ctx := index . 0 -}}
{{- printf "%s-%s" (include "covid-stats.fullname" $ctx | trunc 45 | trimSuffix "-") (index . 1) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "covid-stats.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels: include "covid-stats.labels" (list $ "api") ------------------------------- */}}

{{- define "covid-stats.selectorLabels" -}}
{{- $ctx := index . 0 -}}
app.kubernetes.io/name: {{ include "covid-stats.name" $ctx }}
app.kubernetes.io/instance: {{ $ctx.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "covid-stats.labels" -}}
{{- $ctx := index . 0 -}}
{{ include "covid-stats.selectorLabels" . }}
app.kubernetes.io/part-of: covid-stats
app.kubernetes.io/version: {{ $ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ $ctx.Release.Service }}
helm.sh/chart: {{ include "covid-stats.chart" $ctx }}
{{- with $ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* The labels of a store's pod template: the labels minus those that change with every chart
     version (helm.sh/chart, app.kubernetes.io/version), so a release that changes nothing for
     Redis or PostgreSQL leaves their pod templates, and their pods, alone. */}}
{{- define "covid-stats.stableLabels" -}}
{{- $ctx := index . 0 -}}
{{ include "covid-stats.selectorLabels" . }}
app.kubernetes.io/part-of: covid-stats
app.kubernetes.io/managed-by: {{ $ctx.Release.Service }}
{{- with $ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* A store's claim: include "covid-stats.store.claim" (list $ "redis" .Values.redis)
     volumeClaimTemplates (with their retention policy), unless persistence.existingClaim names
     a claim (then the pod mounts it: volume "data", see "covid-stats.store.dataVolume"). Where
     a cluster is reachable (helm install/upgrade), a changed claim template (size, storage
     class, access modes) is refused up front: Kubernetes forbids updating it in place ("updates
     to statefulset spec for fields other than ... are forbidden"); see the chart README. */}}
{{- define "covid-stats.store.claim" -}}
{{- $ctx := index . 0 -}}
{{- $component := index . 1 -}}
{{- $values := index . 2 -}}
{{- $p := $values.persistence -}}
{{- if and $p.enabled (not $p.existingClaim) }}
{{- $name := include "covid-stats.componentName" (list $ctx $component) }}
{{- $existing := lookup "apps/v1" "StatefulSet" $ctx.Release.Namespace $name }}
{{- range ($existing.spec | default dict).volumeClaimTemplates | default list }}
{{- if eq .metadata.name "data" }}
{{- $old := dict "size" (toString .spec.resources.requests.storage) "storageClass" (toString (.spec.storageClassName | default "")) "accessModes" .spec.accessModes }}
{{- $new := dict "size" (toString $p.size) "storageClass" (toString ($p.storageClass | default "")) "accessModes" $p.accessModes }}
{{- if ne (toJson $old) (toJson $new) }}
{{- fail (printf "%s.persistence: the StatefulSet %s has the claim template %s, the values ask for %s; Kubernetes refuses to change a StatefulSet's volumeClaimTemplates. Follow \"A changed claim template\" in the chart README: kubectl delete statefulset %s --cascade=orphan, then upgrade (and expand the PersistentVolumeClaim itself for a new size)." $component $name (toJson $old) (toJson $new) $name) }}
{{- end }}
{{- end }}
{{- end }}
persistentVolumeClaimRetentionPolicy:
  {{- toYaml $p.retentionPolicy | nindent 2 }}
volumeClaimTemplates:
  - apiVersion: v1
    kind: PersistentVolumeClaim
    metadata:
      name: data
      labels:
        {{- include "covid-stats.selectorLabels" (list $ctx $component) | nindent 8 }}
      {{- with $p.annotations }}
      annotations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
    spec:
      accessModes:
        {{- toYaml $p.accessModes | nindent 8 }}
      {{- if $p.storageClass }}
      storageClassName: {{ $p.storageClass | quote }}
      {{- end }}
      resources:
        requests:
          storage: {{ $p.size }}
{{- end }}
{{- end -}}

{{/* A store's "data" volume when it is no claim template: the existing claim, or an emptyDir
     (persistence off). */}}
{{- define "covid-stats.store.dataVolume" -}}
{{- $p := .persistence -}}
{{- if not $p.enabled }}
- name: data
  emptyDir: {}
{{- else if $p.existingClaim }}
- name: data
  persistentVolumeClaim:
    claimName: {{ $p.existingClaim | quote }}
{{- end }}
{{- end -}}

{{/* Images: include "covid-stats.image" (list $ .Values.api.image) ---------------------
     [<registry>/]<repository>:<tag>[@<digest>]: the image's own registry, else
     global.imageRegistry, else none (the reference is then exactly as before registries). */}}
{{- define "covid-stats.image" -}}
{{- $ctx := index . 0 -}}
{{- $image := index . 1 -}}
{{- $registry := default (dig "imageRegistry" "" ($ctx.Values.global | default dict)) $image.registry -}}
{{- $ref := printf "%s:%s" $image.repository (default $ctx.Chart.AppVersion $image.tag) -}}
{{- with $registry -}}
{{- $ref = printf "%s/%s" . $ref -}}
{{- end -}}
{{- if $image.digest -}}
{{- $ref = printf "%s@%s" $ref $image.digest -}}
{{- end -}}
{{- $ref -}}
{{- end -}}

{{/* imagePullSecrets of every pod: each entry of .Values.global.imagePullSecrets and
     .Values.imagePullSecrets (once each), a name or a
     {name: ...} object, as a LocalObjectReference. include "covid-stats.imagePullSecrets" $ */}}
{{- define "covid-stats.imagePullSecrets" -}}
{{- $names := list }}
{{- range concat ((.Values.global | default dict).imagePullSecrets | default list) (.Values.imagePullSecrets | default list) }}
{{- if kindIs "string" . }}
{{- $names = append $names . }}
{{- else }}
{{- $names = append $names .name }}
{{- end }}
{{- end }}
{{- with $names | uniq }}
imagePullSecrets:
  {{- range . }}
  - name: {{ . | quote }}
  {{- end }}
{{- end }}
{{- end -}}

{{/* Service account name: include "covid-stats.serviceAccountName" (list $ "api" .Values.api) */}}
{{- define "covid-stats.serviceAccountName" -}}
{{- $ctx := index . 0 -}}
{{- $sa := (index . 2).serviceAccount -}}
{{- if $sa.create -}}
{{- default (include "covid-stats.componentName" (list $ctx (index . 1))) $sa.name -}}
{{- else -}}
{{- default "default" $sa.name -}}
{{- end -}}
{{- end -}}

{{/* A ServiceAccount: include "covid-stats.serviceAccount" (list $ "api" .Values.api) */}}
{{- define "covid-stats.serviceAccount" -}}
{{- $ctx := index . 0 -}}
{{- $component := index . 1 -}}
{{- $values := index . 2 -}}
{{- if $values.serviceAccount.create }}
apiVersion: v1
kind: ServiceAccount
metadata:
  name: {{ include "covid-stats.serviceAccountName" . }}
  labels:
    {{- include "covid-stats.labels" (list $ctx $component) | nindent 4 }}
  {{- with $values.serviceAccount.annotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
automountServiceAccountToken: {{ $values.serviceAccount.automountToken }}
{{- end }}
{{- end -}}

{{/* Scheduling, shared by every pod: include "covid-stats.scheduling" (list $ "api" .Values.api true)
     The last argument: a Deployment (its pods carry pod-template-hash, spread per revision). */}}
{{- define "covid-stats.scheduling" -}}
{{- $ctx := index . 0 -}}
{{- $component := index . 1 -}}
{{- $values := index . 2 -}}
{{- $deployment := index . 3 -}}
{{- with $values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- include "covid-stats.imagePullSecrets" $ctx }}
{{- with $values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- if and $values.topologySpread.enabled $values.topologySpread.topologyKeys }}
topologySpreadConstraints:
  {{- range $values.topologySpread.topologyKeys }}
  - maxSkew: {{ $values.topologySpread.maxSkew }}
    topologyKey: {{ . }}
    whenUnsatisfiable: {{ $values.topologySpread.whenUnsatisfiable }}
    nodeTaintsPolicy: {{ $values.topologySpread.nodeTaintsPolicy }}
    nodeAffinityPolicy: {{ $values.topologySpread.nodeAffinityPolicy }}
    labelSelector:
      matchLabels:
        {{- include "covid-stats.selectorLabels" (list $ctx $component) | nindent 8 }}
    {{- if $deployment }}
    matchLabelKeys: [pod-template-hash]
    {{- end }}
  {{- end }}
{{- end }}
{{- end -}}

{{/* Probes: include "covid-stats.probe" (list .Values.api.probes.readiness (dict "httpGet" ...)) */}}
{{- define "covid-stats.probe" -}}
{{- $probe := index . 0 -}}
{{- toYaml (index . 1) }}
{{- range $key := list "initialDelaySeconds" "periodSeconds" "timeoutSeconds" "failureThreshold" "successThreshold" }}
{{- if hasKey $probe $key }}
{{ $key }}: {{ index $probe $key }}
{{- end }}
{{- end }}
{{- end -}}

{{/* Generated secret values, kept across upgrades --------------------------------------
     include "covid-stats.generated" (dict "ctx" $ "secret" NAME "key" KEY)
     The value stored in the existing Secret when there is one (lookup), else a new random
     one; memoised for the whole render so that the Secret and the checksum annotations of
     the pods that use it agree. (helm template has no cluster: a new value every render.) */}}
{{- define "covid-stats.generated" -}}
{{- $ctx := .ctx -}}
{{- if not (hasKey $ctx "covidStatsGenerated") -}}
{{- $_ := set $ctx "covidStatsGenerated" dict -}}
{{- end -}}
{{- $cache := get $ctx "covidStatsGenerated" -}}
{{- $id := printf "%s/%s" .secret .key -}}
{{- if not (hasKey $cache $id) -}}
{{- $value := randAlphaNum 40 -}}
{{- $existing := lookup "v1" "Secret" $ctx.Release.Namespace .secret -}}
{{- if and $existing (hasKey $existing "data") -}}
{{- if hasKey $existing.data .key -}}
{{- $value = index $existing.data .key | b64dec -}}
{{- end -}}
{{- end -}}
{{- $_ := set $cache $id $value -}}
{{- end -}}
{{- get $cache $id -}}
{{- end -}}

{{/* Redis connection ------------------------------------------------------------------- */}}

{{- define "covid-stats.redis.host" -}}
{{- if .Values.redis.enabled -}}
{{- include "covid-stats.componentName" (list . "redis") -}}
{{- else -}}
{{- required "externalRedis.host is required when redis.enabled is false" .Values.externalRedis.host -}}
{{- end -}}
{{- end -}}

{{/* The Secret holding the Redis password; empty when Redis needs none. */}}
{{- define "covid-stats.redis.secretName" -}}
{{- if .Values.redis.enabled -}}
{{- if .Values.redis.auth.enabled -}}
{{- default (include "covid-stats.componentName" (list . "redis")) .Values.redis.auth.existingSecret -}}
{{- end -}}
{{- else if .Values.externalRedis.existingSecret -}}
{{- .Values.externalRedis.existingSecret -}}
{{- else if .Values.externalRedis.password -}}
{{- include "covid-stats.componentName" (list . "external-redis") -}}
{{- end -}}
{{- end -}}

{{- define "covid-stats.redis.secretKey" -}}
{{- if .Values.redis.enabled -}}
{{- .Values.redis.auth.existingSecretPasswordKey -}}
{{- else -}}
{{- .Values.externalRedis.existingSecretPasswordKey -}}
{{- end -}}
{{- end -}}

{{/* REDIS_PASSWORD (from the Secret) then REDIS_URL, which Kubernetes expands from it. */}}
{{- define "covid-stats.redis.env" -}}
{{- $secret := include "covid-stats.redis.secretName" . -}}
{{- $scheme := "redis" -}}
{{- $user := "" -}}
{{- $port := .Values.redis.port -}}
{{- $db := 0 -}}
{{- if not .Values.redis.enabled -}}
{{- $port = .Values.externalRedis.port -}}
{{- $db = .Values.externalRedis.database -}}
{{- $user = .Values.externalRedis.username -}}
{{- if .Values.externalRedis.tls }}{{ $scheme = "rediss" }}{{ end -}}
{{- end -}}
{{- $auth := "" -}}
{{- with $user }}{{ $auth = printf "%s@" . }}{{ end -}}
{{- $query := include "covid-stats.storeTls.query" (list . "redis") -}}
{{- if $secret }}
# The password apart: the services put it into REDIS_URL percent-encoded (any characters).
- name: REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ include "covid-stats.redis.secretKey" . }}
{{- end }}
- name: REDIS_URL
  value: {{ printf "%s://%s%s:%d/%d%s" $scheme $auth (include "covid-stats.redis.host" .) (int $port) (int $db) $query | quote }}
{{- end -}}

{{/* PostgreSQL connection -------------------------------------------------------------- */}}

{{- define "covid-stats.database.host" -}}
{{- if .Values.postgresql.enabled -}}
{{- include "covid-stats.componentName" (list . "postgresql") -}}
{{- else -}}
{{- required "externalDatabase.host is required when postgresql.enabled is false" .Values.externalDatabase.host -}}
{{- end -}}
{{- end -}}

{{- define "covid-stats.database.secretName" -}}
{{- if .Values.postgresql.enabled -}}
{{- default (include "covid-stats.componentName" (list . "postgresql")) .Values.postgresql.auth.existingSecret -}}
{{- else if .Values.externalDatabase.existingSecret -}}
{{- .Values.externalDatabase.existingSecret -}}
{{- else -}}
{{- include "covid-stats.componentName" (list . "external-database") -}}
{{- end -}}
{{- end -}}

{{- define "covid-stats.database.secretKey" -}}
{{- if .Values.postgresql.enabled -}}
{{- .Values.postgresql.auth.existingSecretPasswordKey -}}
{{- else -}}
{{- .Values.externalDatabase.existingSecretPasswordKey -}}
{{- end -}}
{{- end -}}

{{/* DATABASE_PASSWORD (from the Secret; the services put it into DATABASE_URL percent-encoded,
     so it may hold any characters) and DATABASE_URL, with the TLS files of
     externalDatabase.caSecret / clientCertSecret. */}}
{{- define "covid-stats.database.env" -}}
{{- $db := .Values.postgresql.auth.database -}}
{{- $user := .Values.postgresql.auth.username -}}
{{- $port := .Values.postgresql.port -}}
{{- $params := list -}}
{{- if not .Values.postgresql.enabled -}}
{{- $db = .Values.externalDatabase.database -}}
{{- $user = .Values.externalDatabase.username -}}
{{- $port = .Values.externalDatabase.port -}}
{{- with .Values.externalDatabase.sslmode }}{{ $params = append $params (printf "sslmode=%s" .) }}{{ end -}}
{{- end -}}
{{- $query := include "covid-stats.storeTls.query" (list . "database") -}}
{{- if and $query $params -}}{{ $query = printf "&%s" (trimPrefix "?" $query) }}{{ end -}}
- name: DATABASE_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "covid-stats.database.secretName" . }}
      key: {{ include "covid-stats.database.secretKey" . }}
- name: DATABASE_URL
  value: {{ printf "postgresql://%s@%s:%d/%s%s%s" $user (include "covid-stats.database.host" .) (int $port) $db (ternary (printf "?%s" (join "&" $params)) "" (gt (len $params) 0)) $query | quote }}
{{- end -}}

{{/* TLS files of an external store ------------------------------------------------------
     externalDatabase / externalRedis .caSecret (ca.crt) and .clientCertSecret (tls.crt,
     tls.key): Secrets of the user's, mounted read-only at /etc/covid-stats/tls/<store>/ into
     every pod that talks to the store, and named in its URL. "database" or "redis". */}}
{{- define "covid-stats.storeTls.values" -}}
{{- $ctx := index . 0 -}}
{{- $store := index . 1 -}}
{{- if eq $store "database" -}}
{{- if not $ctx.Values.postgresql.enabled }}{{ toJson $ctx.Values.externalDatabase }}{{ else }}{}{{ end -}}
{{- else -}}
{{- if not $ctx.Values.redis.enabled }}{{ toJson $ctx.Values.externalRedis }}{{ else }}{}{{ end -}}
{{- end -}}
{{- end -}}

{{- define "covid-stats.storeTls.dir" -}}
{{- printf "/etc/covid-stats/tls/%s" (index . 1) -}}
{{- end -}}

{{/* The URL's query naming the files: "" without them. */}}
{{- define "covid-stats.storeTls.query" -}}
{{- $v := include "covid-stats.storeTls.values" . | fromJson -}}
{{- $dir := include "covid-stats.storeTls.dir" . -}}
{{- $params := list -}}
{{- if eq (index . 1) "database" -}}
{{- with $v.caSecret }}{{ $params = append $params (printf "sslrootcert=%s/ca/ca.crt" $dir) }}{{ end -}}
{{- with $v.clientCertSecret }}{{ $params = concat $params (list (printf "sslcert=%s/client/tls.crt" $dir) (printf "sslkey=%s/client/tls.key" $dir)) }}{{ end -}}
{{- else -}}
{{- with $v.caSecret }}{{ $params = concat $params (list (printf "ssl_ca_certs=%s/ca/ca.crt" $dir) "ssl_cert_reqs=required") }}{{ end -}}
{{- with $v.clientCertSecret }}{{ $params = concat $params (list (printf "ssl_certfile=%s/client/tls.crt" $dir) (printf "ssl_keyfile=%s/client/tls.key" $dir)) }}{{ end -}}
{{- end -}}
{{- if $params }}?{{ join "&" $params }}{{ end -}}
{{- end -}}

{{/* volumeMounts / volumes for the stores a container talks to:
     include "covid-stats.storeTls.mounts" (list $ "database" "redis") */}}
{{- define "covid-stats.storeTls.mounts" -}}
{{- $ctx := index . 0 -}}
{{- range $store := rest . }}
{{- $v := include "covid-stats.storeTls.values" (list $ctx $store) | fromJson -}}
{{- $dir := include "covid-stats.storeTls.dir" (list $ctx $store) -}}
{{- if $v.caSecret }}
- name: {{ $store }}-tls-ca
  mountPath: {{ $dir }}/ca
  readOnly: true
{{- end }}
{{- if $v.clientCertSecret }}
- name: {{ $store }}-tls-client
  mountPath: {{ $dir }}/client
  readOnly: true
{{- end }}
{{- end }}
{{- end -}}

{{- define "covid-stats.storeTls.volumes" -}}
{{- $ctx := index . 0 -}}
{{- range $store := rest . }}
{{- $v := include "covid-stats.storeTls.values" (list $ctx $store) | fromJson -}}
{{- with $v.caSecret }}
- name: {{ $store }}-tls-ca
  secret:
    secretName: {{ . }}
    defaultMode: 0440
    items:
      - key: ca.crt
        path: ca.crt
{{- end }}
{{- with $v.clientCertSecret }}
- name: {{ $store }}-tls-client
  secret:
    secretName: {{ . }}
    defaultMode: 0440
    items:
      - key: tls.crt
        path: tls.crt
      - key: tls.key
        path: tls.key
{{- end }}
{{- end }}
{{- end -}}

{{/* The upstream the fetcher reads: the in-cluster replay upstream when it is enabled. */}}
{{- define "covid-stats.upstreamBaseUrl" -}}
{{- if .Values.replayUpstream.enabled -}}
{{- printf "http://%s:%d/" (include "covid-stats.componentName" (list . "replay-upstream")) (int .Values.replayUpstream.port) -}}
{{- else -}}
{{- .Values.statsFetcher.upstream.baseUrl -}}
{{- end -}}
{{- end -}}

{{/* Checksums of the Secrets a pod uses, one per Secret, so that a change to one rolls only
     the pods that read it: the Secret's name, and the password when the chart writes it
     (generated, or externalDatabase/externalRedis.password). A Secret of yours
     (existingSecret) counts by its name only: rotate it, then restart the pods. */}}
{{- define "covid-stats.database.secretChecksum" -}}
{{- $parts := list (include "covid-stats.database.secretName" .) -}}
{{- if .Values.postgresql.enabled -}}
{{- if not .Values.postgresql.auth.existingSecret -}}
{{- $parts = append $parts (include "covid-stats.generated" (dict "ctx" . "secret" (include "covid-stats.database.secretName" .) "key" (include "covid-stats.database.secretKey" .))) -}}
{{- end -}}
{{- else if not .Values.externalDatabase.existingSecret -}}
{{- $parts = append $parts .Values.externalDatabase.password -}}
{{- end -}}
{{- join "\n" $parts | sha256sum -}}
{{- end -}}

{{- define "covid-stats.redis.secretChecksum" -}}
{{- $parts := list (include "covid-stats.redis.secretName" .) -}}
{{- if and .Values.redis.enabled .Values.redis.auth.enabled (not .Values.redis.auth.existingSecret) -}}
{{- $parts = append $parts (include "covid-stats.generated" (dict "ctx" . "secret" (include "covid-stats.redis.secretName" .) "key" (include "covid-stats.redis.secretKey" .))) -}}
{{- else if and (not .Values.redis.enabled) (not .Values.externalRedis.existingSecret) -}}
{{- $parts = append $parts .Values.externalRedis.password -}}
{{- end -}}
{{- join "\n" $parts | sha256sum -}}
{{- end -}}

{{/* The Secret holding WEBHOOK_SECRET: yours (existingSecret), else the chart's. */}}
{{- define "covid-stats.webhooks.secretName" -}}
{{- default (include "covid-stats.componentName" (list . "webhooks")) .Values.statsFetcher.webhooks.existingSecret -}}
{{- end -}}

{{- define "covid-stats.refreshToken.secretName" -}}
{{- default (include "covid-stats.componentName" (list . "refresh-token")) .Values.statsFetcher.refreshToken.existingSecret -}}
{{- end -}}

{{/* Volumes every one of our pods has: /tmp (the root filesystem is read-only). */}}
{{- define "covid-stats.tmpVolume" -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ . }}
{{- end -}}

{{/*
OpenTelemetry settings of the api and the fetcher (covid_stats_runtime.tracing): nothing when
tracing.otlpEndpoint is empty, which leaves tracing off.
*/}}
{{- define "covid-stats.tracing.env" -}}
{{- with .Values.tracing.otlpEndpoint }}
OTEL_EXPORTER_OTLP_ENDPOINT: {{ . | quote }}
OTEL_TRACES_SAMPLER: {{ $.Values.tracing.sampler | quote }}
OTEL_TRACES_SAMPLER_ARG: {{ $.Values.tracing.samplerArg | toString | quote }}
{{- end }}
{{- end }}

{{/* The bounds of every connection to an HTTP port, the same for the api's and the fetcher's
     (one protocol for both, covid_stats_runtime.protocol; docs/limits.md): from api.http. */}}
{{- define "covid-stats.httpLimits.env" -}}
{{- with .Values.api.http -}}
HTTP_MAX_REQUEST_HEAD_BYTES: {{ .maxRequestHeadBytes | int | quote }}
HTTP_REQUEST_TIMEOUT_SECONDS: {{ .requestTimeoutSeconds | toString | quote }}
HTTP_NEW_CONNECTION_TIMEOUT_SECONDS: {{ .newConnectionTimeoutSeconds | toString | quote }}
{{- end }}
{{- end }}

{{/* Prometheus job names: metrics.jobs decides them, by default "<fullname>-api" and
     "<fullname>-fetcher" (one release's series never mix with another's); every place that
     names a job takes it from here. include "covid-stats.metricsJob" (list $ "api") */}}
{{- define "covid-stats.metricsJob" -}}
{{- $ctx := index . 0 -}}
{{- $jobs := $ctx.Values.metrics.jobs -}}
{{- $fullname := include "covid-stats.fullname" $ctx -}}
{{- $defaults := dict "api" (printf "%s-api" $fullname) "stats-fetcher" (printf "%s-fetcher" $fullname) "edge-cache" (printf "%s-edge-cache" $fullname) -}}
{{- $set := dict "api" $jobs.api "stats-fetcher" $jobs.statsFetcher "edge-cache" ($jobs.edgeCache | default "") -}}
{{- get $set (index . 1) | default (get $defaults (index . 1)) -}}
{{- end -}}

{{/* The Grafana dashboard's uid, one per release (namespace and fullname): Grafana keys
     dashboards by uid, so two releases' sidecar ConfigMaps would overwrite each other.
     At most 40 characters (Grafana's limit). */}}
{{- define "covid-stats.dashboardUid" -}}
{{- $fullname := include "covid-stats.fullname" . -}}
{{- printf "%s-%s" ($fullname | trunc 31 | trimSuffix "-") (printf "%s/%s" .Release.Namespace $fullname | sha256sum | trunc 8) -}}
{{- end -}}

{{/* A monitoring file (files/alerts.yaml, files/dashboard.json) with its job placeholders,
     @API_JOB@ and @FETCHER_JOB@, replaced by the job names of metrics.jobs, and the
     dashboard's @DASHBOARD_UID@ and @DASHBOARD_TITLE@ by the release's.
     include "covid-stats.monitoringFile" (list $ "files/alerts.yaml") */}}
{{- define "covid-stats.monitoringFile" -}}
{{- $ctx := index . 0 -}}
{{- $ctx.Files.Get (index . 1)
    | replace "@API_JOB@" (include "covid-stats.metricsJob" (list $ctx "api"))
    | replace "@FETCHER_JOB@" (include "covid-stats.metricsJob" (list $ctx "stats-fetcher"))
    | replace "@EDGE_JOB@" (include "covid-stats.metricsJob" (list $ctx "edge-cache"))
    | replace "@DASHBOARD_UID@" (include "covid-stats.dashboardUid" $ctx)
    | replace "@DASHBOARD_TITLE@" (printf "covid-stats (%s, %s)" (include "covid-stats.fullname" $ctx) $ctx.Release.Namespace) -}}
{{- end -}}

{{/* GitOps (gitops.enabled): the Argo CD sync wave of a resource, as annotation lines, or
     nothing. include "covid-stats.gitops.wave" (list $ "-1")
     Waves: -2 the Secrets the chart creates, -1 the stores (StatefulSets and Services),
     0 the migration (a Sync hook, see migration/_hooks.tpl), 1 the api and the fetcher. */}}
{{- define "covid-stats.gitops.wave" -}}
{{- if (index . 0).Values.gitops.enabled -}}
argocd.argoproj.io/sync-wave: {{ index . 1 | quote }}
{{- end -}}
{{- end -}}

{{/* Bytes of a Kubernetes quantity ("256Mi", "1G", "0.5Gi", 1073741824), as an integer. */}}
{{- define "covid-stats.quantityBytes" -}}
{{- $q := toString . -}}
{{- $number := regexFind "^[0-9]+(\\.[0-9]+)?" $q -}}
{{- $units := dict "" 1.0 "m" 0.001 "k" 1e3 "M" 1e6 "G" 1e9 "T" 1e12 "P" 1e15 "E" 1e18 "Ki" 1024.0 "Mi" 1048576.0 "Gi" 1073741824.0 "Ti" 1099511627776.0 "Pi" 1125899906842624.0 "Ei" 1152921504606846976.0 -}}
{{- mulf (float64 $number) (get $units (trimPrefix $number $q)) | int64 -}}
{{- end -}}

{{/* Bytes of a Redis memory size ("192mb", "1gb", "1048576"; 1024-based like Redis). */}}
{{- define "covid-stats.redisBytes" -}}
{{- $number := regexFind "^[0-9]+" . -}}
{{- $units := dict "" 1 "b" 1 "kb" 1024 "mb" 1048576 "gb" 1073741824 -}}
{{- mul (int64 $number) (get $units (trimPrefix $number .)) -}}
{{- end -}}

{{/* The port a URL names, else its scheme's (https 443, http 80). include "covid-stats.urlPort" "https://host/" */}}
{{- define "covid-stats.urlPort" -}}
{{- $url := urlParse . -}}
{{- $port := regexFind ":[0-9]+$" $url.host | trimPrefix ":" -}}
{{- if not $port -}}
{{- $port = get (dict "https" "443" "http" "80") $url.scheme -}}
{{- end -}}
{{- required (printf "networkPolicy.egress: cannot tell the port of %q, name it in the URL" .) $port -}}
{{- end -}}

{{/* Egress rules (networkPolicy.egress), one NetworkPolicyEgressRule each:
     include "covid-stats.egress.redis" $ (also database, upstream, tracing, api). A store or
     pod of the release is selected by its labels, on its container port; a host of yours by
     the peers given (none: any address), on the port its URL or values name. */}}
{{- define "covid-stats.egress.inRelease" -}}
{{- $ctx := index . 0 -}}
- to:
    - podSelector:
        matchLabels:
          {{- include "covid-stats.selectorLabels" (list $ctx (index . 1)) | nindent 10 }}
  ports:
    - port: {{ index . 2 }}
      protocol: TCP
{{- end -}}

{{- define "covid-stats.egress.external" -}}
- ports:
    {{- range (index . 1) }}
    - port: {{ . }}
      protocol: TCP
    {{- end }}
  {{- with index . 0 }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end -}}

{{- define "covid-stats.egress.redis" -}}
{{- if .Values.redis.enabled -}}
{{- include "covid-stats.egress.inRelease" (list . "redis" .Values.redis.port) -}}
{{- else -}}
{{- include "covid-stats.egress.external" (list .Values.networkPolicy.egress.externalRedis (list .Values.externalRedis.port)) -}}
{{- end -}}
{{- end -}}

{{- define "covid-stats.egress.database" -}}
{{- if .Values.postgresql.enabled -}}
{{- include "covid-stats.egress.inRelease" (list . "postgresql" .Values.postgresql.port) -}}
{{- else -}}
{{- include "covid-stats.egress.external" (list .Values.networkPolicy.egress.externalDatabase (list .Values.externalDatabase.port)) -}}
{{- end -}}
{{- end -}}

{{- define "covid-stats.egress.upstream" -}}
{{- $upstream := .Values.networkPolicy.egress.upstream -}}
{{- if .Values.replayUpstream.enabled -}}
{{- include "covid-stats.egress.inRelease" (list . "replay-upstream" .Values.replayUpstream.port) -}}
{{- else if $upstream.ports -}}
- ports:
    {{- toYaml $upstream.ports | nindent 4 }}
  {{- with $upstream.to }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- else -}}
{{- include "covid-stats.egress.external" (list $upstream.to (list (include "covid-stats.urlPort" .Values.statsFetcher.upstream.baseUrl | int))) -}}
{{- end -}}
{{- end -}}

{{- define "covid-stats.egress.tracing" -}}
{{- with .Values.tracing.otlpEndpoint -}}
{{- include "covid-stats.egress.external" (list $.Values.networkPolicy.egress.tracing.to (list (include "covid-stats.urlPort" . | int))) -}}
{{- end -}}
{{- end -}}

{{/* The fetcher to its webhooks' receivers: each URL's port (none without URLs). */}}
{{- define "covid-stats.egress.webhooks" -}}
{{- $ports := list -}}
{{- range .Values.statsFetcher.webhooks.urls -}}
{{- $ports = append $ports (include "covid-stats.urlPort" . | int) -}}
{{- end -}}
{{- with $ports -}}
{{- include "covid-stats.egress.external" (list $.Values.networkPolicy.egress.webhooks.to (uniq .)) -}}
{{- end -}}
{{- end -}}

{{- define "covid-stats.egress.api" -}}
{{- include "covid-stats.egress.inRelease" (list . "api" .Values.api.port) -}}
{{- end -}}

{{/* To the questions' pods (questions.enabled: the edge cache's egress). */}}
{{- define "covid-stats.egress.questions" -}}
{{- include "covid-stats.egress.inRelease" (list . "questions" .Values.api.port) -}}
{{- end -}}


{{/* The edge cache (edgeCache) ---------------------------------------------------------
     The Service that clients and the chart's Ingress / HTTPRoute reach: the edge's when it is
     enabled, else the api's. */}}
{{- define "covid-stats.frontService" -}}
{{- include "covid-stats.componentName" (list . (ternary "edge-cache" "api" .Values.edgeCache.enabled)) -}}
{{- end -}}

{{/* PURGE_URLS of the fetcher: statsFetcher.purge.urls (edges of yours), then the chart's edge
     cache's headless purge Service when edgeCache is enabled (one address per ready pod: the
     fetcher purges each), comma-separated; "" with neither. */}}
{{- define "covid-stats.purgeUrls" -}}
{{- $urls := .Values.statsFetcher.purge.urls | default list -}}
{{- if .Values.edgeCache.enabled -}}
{{- $urls = append $urls (printf "http://%s:%d/" (include "covid-stats.componentName" (list . "edge-cache-purge")) (int .Values.edgeCache.purgePort)) -}}
{{- end -}}
{{- join "," $urls -}}
{{- end -}}

{{/* The exporter sidecar's image: its tag defaults to the edge image's (the same Varnish). */}}
{{- define "covid-stats.edgeCache.exporterImage" -}}
{{- $image := deepCopy .Values.edgeCache.metrics.image -}}
{{- $_ := set $image "tag" (default .Values.edgeCache.image.tag $image.tag) -}}
{{- include "covid-stats.image" (list . $image) -}}
{{- end -}}

{{/* The VCL of the edge: files/varnish/default.vcl (`make chart-vcl` copies it from
     deploy/varnish/default.vcl) with its backend's .host and .port set to the api Service and
     its ACL's entries to edgeCache.purge.acl. A VCL that no longer has exactly one .host,
     one .port and one acl fails the render rather than shipping an untemplated cache. */}}
{{- define "covid-stats.edgeCache.vcl" -}}
{{- $vcl := .Files.Get "files/varnish/default.vcl" -}}
{{- $hostRe := `(\.host\s*=\s*)"[^"]*"` -}}
{{- $portRe := `(\.port\s*=\s*)"[^"]*"` -}}
{{- $aclRe := `(?s)(\nacl\s+[A-Za-z_][A-Za-z0-9_]*\s*\{)[^}]*\}` -}}
{{- range $what, $re := dict "a backend .host" $hostRe "a backend .port" $portRe "an acl" $aclRe -}}
{{- if ne (len (regexFindAll $re $vcl -1)) 1 -}}
{{- fail (printf "edgeCache: files/varnish/default.vcl must have exactly one %s for the chart to template (found %d)" $what (len (regexFindAll $re $vcl -1))) -}}
{{- end -}}
{{- end -}}
{{- $entries := list -}}
{{- range .Values.edgeCache.purge.acl -}}
{{- $parts := splitList "/" . -}}
{{- if eq (len $parts) 2 -}}
{{- $entries = append $entries (printf "    \"%s\"/%s;" (index $parts 0) (index $parts 1)) -}}
{{- else -}}
{{- $entries = append $entries (printf "    \"%s\";" .) -}}
{{- end -}}
{{- end -}}
{{- $vcl = regexReplaceAll $hostRe $vcl (printf "${1}\"%s\"" (include "covid-stats.componentName" (list . "api"))) -}}
{{- $vcl = regexReplaceAll $portRe $vcl (printf "${1}\"%d\"" (int .Values.api.service.port)) -}}
{{- $vcl = regexReplaceAll $aclRe $vcl (printf "${1}\n%s\n}" (join "\n" $entries)) -}}
{{- if .Values.questions.enabled -}}
{{- /* The questions' pods (questions.enabled): a second backend, the api's with the questions'
     Service for host, and a vcl_recv of its own before the file's (Varnish runs a subroutine's
     definitions in order) that sends every request with a query string there. */ -}}
{{- $backendRe := `(?s)\nbackend api \{.*?\n\}` -}}
{{- $recv := "\nsub vcl_recv {" -}}
{{- if or (ne (len (regexFindAll $backendRe $vcl -1)) 1) (ne (len (regexFindAll (regexQuoteMeta $recv) $vcl -1)) 1) -}}
{{- fail "questions: files/varnish/default.vcl must have exactly one `backend api { ... }` and one `sub vcl_recv {` at the start of a line for the chart to route the questions" -}}
{{- end -}}
{{- $questions := regexFind $backendRe $vcl | replace "backend api {" "backend questions {" -}}
{{- $questions = regexReplaceAll $hostRe $questions (printf "${1}\"%s\"" (include "covid-stats.componentName" (list . "questions"))) -}}
{{- $route := printf "%s\n\n# questions.enabled: a request with a query string is a question, for the questions' pods.\nsub vcl_recv {\n    if (local.socket != \"purge\" && req.url ~ \"\\?\") {\n        set req.backend_hint = questions;\n    }\n}\n%s" $questions $recv -}}
{{- $vcl = replace $recv $route $vcl -}}
{{- end -}}
{{- $vcl -}}
{{- end -}}

{{/* The fetcher to every edge pod's purge port (edgeCache.enabled). */}}
{{- define "covid-stats.egress.edgePurge" -}}
{{- include "covid-stats.egress.inRelease" (list . "edge-cache" .Values.edgeCache.purgePort) -}}
{{- end -}}
