{{/* The api's Deployment, and the questions' (the same pods, its own replicas and
     resources): include "covid-stats.api.deployment" (list $ "api" .Values.api) */}}
{{- define "covid-stats.api.deployment" -}}
{{- $ctx := index . 0 -}}
{{- $component := index . 1 -}}
{{- $api := index . 2 }}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ include "covid-stats.componentName" (list $ctx $component) }}
  labels:
    {{- include "covid-stats.labels" (list $ctx $component) | nindent 4 }}
  {{- with include "covid-stats.gitops.wave" (list $ctx "1") }}
  annotations:
    {{- . | nindent 4 }}
  {{- end }}
spec:
  {{- if not $api.autoscaling.enabled }}
  replicas: {{ $api.replicas }}
  {{- end }}
  revisionHistoryLimit: 5
  strategy:
    type: RollingUpdate
    rollingUpdate:
      maxSurge: {{ $api.strategy.maxSurge }}
      maxUnavailable: 0
  selector:
    matchLabels:
      {{- include "covid-stats.selectorLabels" (list $ctx $component) | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "covid-stats.labels" (list $ctx $component) | nindent 8 }}
        {{- with $api.podLabels }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      annotations:
        checksum/config: {{ include (print $ctx.Template.BasePath "/api/configmap.yaml") $ctx | sha256sum }}
        checksum/database-secret: {{ include "covid-stats.database.secretChecksum" $ctx }}
        checksum/redis-secret: {{ include "covid-stats.redis.secretChecksum" $ctx }}
        {{- if and $ctx.Values.metrics.scrapeAnnotations $api.metrics.enabled }}
        prometheus.io/scrape: "true"
        prometheus.io/port: {{ $api.metrics.port | int | quote }}
        prometheus.io/path: "/metrics"
        prometheus.io/job: {{ include "covid-stats.metricsJob" (list $ctx "api") | quote }}
        {{- end }}
        {{- with $api.podAnnotations }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
    spec:
      serviceAccountName: {{ include "covid-stats.serviceAccountName" (list $ctx "api" $ctx.Values.api) }}
      automountServiceAccountToken: {{ $api.serviceAccount.automountToken }}
      securityContext:
        {{- toYaml $api.podSecurityContext | nindent 8 }}
      # Longer than the preStop sleep plus gunicorn's graceful timeout (checked at install).
      terminationGracePeriodSeconds: {{ $api.terminationGracePeriodSeconds }}
      {{- with include "covid-stats.scheduling" (list $ctx $component $api true) | trim }}
      {{- . | nindent 6 }}
      {{- end }}
      containers:
        - name: api
          image: {{ include "covid-stats.image" (list $ctx $api.image) | quote }}
          imagePullPolicy: {{ $api.image.pullPolicy }}
          # The image's CMD (plus --reload in development); gunicorn_conf reads its settings
          # (API_*, WEB_CONCURRENCY, GUNICORN_*) from the environment.
          command: ["gunicorn"]
          args:
            - "-c"
            - "python:covid_stats_api.serving.gunicorn_conf"
            {{- if $api.reload }}
            - "--reload"
            {{- end }}
            - "covid_stats_api.main:app"
          ports:
            - name: http
              containerPort: {{ $api.port }}
              protocol: TCP
            {{- if $api.metrics.enabled }}
            - name: metrics
              containerPort: {{ $api.metrics.port }}
              protocol: TCP
            {{- end }}
          envFrom:
            - configMapRef:
                name: {{ include "covid-stats.componentName" (list $ctx "api") }}
          env:
            {{- include "covid-stats.database.env" $ctx | trim | nindent 12 }}
            {{- include "covid-stats.redis.env" $ctx | trim | nindent 12 }}
            {{- with $api.extraEnv }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
          startupProbe:
            {{- include "covid-stats.probe" (list $api.probes.startup (dict "httpGet" (dict "path" "/healthz" "port" "http"))) | nindent 12 }}
          livenessProbe:
            {{- include "covid-stats.probe" (list $api.probes.liveness (dict "httpGet" (dict "path" "/healthz" "port" "http"))) | nindent 12 }}
          readinessProbe:
            {{- include "covid-stats.probe" (list $api.probes.readiness (dict "httpGet" (dict "path" "/readyz" "port" "http"))) | nindent 12 }}
          lifecycle:
            preStop:
              exec:
                command: ["sleep", {{ $api.preStopSleepSeconds | int | quote }}]
          resources:
            {{- toYaml $api.resources | nindent 12 }}
          securityContext:
            {{- toYaml $api.securityContext | nindent 12 }}
          volumeMounts:
            - name: tmp
              mountPath: /tmp
            - name: metrics
              mountPath: {{ $api.metrics.multiprocDir }}
            {{- include "covid-stats.storeTls.mounts" (list $ctx "database" "redis") | nindent 12 }}
      volumes:
        {{- include "covid-stats.tmpVolume" $api.tmpSizeLimit | nindent 8 }}
        {{- include "covid-stats.storeTls.volumes" (list $ctx "database" "redis") | nindent 8 }}
        - name: metrics
          emptyDir:
            medium: Memory
            sizeLimit: {{ $api.metrics.sizeLimit }}
{{- end -}}

{{/* The api's Services (traffic, and metrics), and the questions': include "covid-stats.api.service" (list $ "api" .Values.api) */}}
{{- define "covid-stats.api.service" -}}
{{- $ctx := index . 0 -}}
{{- $component := index . 1 -}}
{{- $api := index . 2 }}
apiVersion: v1
kind: Service
metadata:
  name: {{ include "covid-stats.componentName" (list $ctx $component) }}
  labels:
    {{- include "covid-stats.labels" (list $ctx $component) | nindent 4 }}
  {{- with $api.service.annotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
spec:
  type: {{ $api.service.type }}
  selector:
    {{- include "covid-stats.selectorLabels" (list $ctx $component) | nindent 4 }}
  ports:
    - name: http
      port: {{ $api.service.port }}
      targetPort: http
      protocol: TCP
{{- if $api.metrics.enabled }}
---
# /metrics on its own port, for Prometheus only: never on the api Service above, whatever its
# type (a LoadBalancer publishes every port it has). The ServiceMonitor scrapes this one.
apiVersion: v1
kind: Service
metadata:
  name: {{ include "covid-stats.componentName" (list $ctx (printf "%s-metrics" $component)) }}
  labels:
    {{- include "covid-stats.labels" (list $ctx $component) | nindent 4 }}
spec:
  type: ClusterIP
  selector:
    {{- include "covid-stats.selectorLabels" (list $ctx $component) | nindent 4 }}
  ports:
    - name: metrics
      port: {{ $api.metrics.port }}
      targetPort: metrics
      protocol: TCP
{{- end }}
{{- end -}}

{{/* The api's HorizontalPodAutoscaler, and the questions': include "covid-stats.api.hpa" (list $ "api" .Values.api) */}}
{{- define "covid-stats.api.hpa" -}}
{{- $ctx := index . 0 -}}
{{- $component := index . 1 -}}
{{- $api := index . 2 }}
{{- if $api.autoscaling.enabled }}
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata:
  name: {{ include "covid-stats.componentName" (list $ctx $component) }}
  labels:
    {{- include "covid-stats.labels" (list $ctx $component) | nindent 4 }}
spec:
  scaleTargetRef:
    apiVersion: apps/v1
    kind: Deployment
    name: {{ include "covid-stats.componentName" (list $ctx $component) }}
  minReplicas: {{ $api.autoscaling.minReplicas }}
  # Counted in the connection budget (checked at install).
  maxReplicas: {{ $api.autoscaling.maxReplicas }}
  metrics:
    - type: Resource
      resource:
        name: cpu
        target:
          type: Utilization
          averageUtilization: {{ $api.autoscaling.targetCPUUtilizationPercentage }}
    # No memory target: the api's memory does not fall with its load (checked at install).
  {{- with $api.autoscaling.behavior }}
  behavior:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
{{- end -}}

{{/* The api's PodDisruptionBudget, and the questions': include "covid-stats.api.pdb" (list $ "api" .Values.api) */}}
{{- define "covid-stats.api.pdb" -}}
{{- $ctx := index . 0 -}}
{{- $component := index . 1 -}}
{{- $api := index . 2 }}
{{- if $api.pdb.enabled }}
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ include "covid-stats.componentName" (list $ctx $component) }}
  labels:
    {{- include "covid-stats.labels" (list $ctx $component) | nindent 4 }}
spec:
  # A NotReady pod (every fetcher while a store is away) may be evicted: a drain never waits
  # for it to become ready.
  unhealthyPodEvictionPolicy: AlwaysAllow
  maxUnavailable: {{ $api.pdb.maxUnavailable }}
  selector:
    matchLabels:
      {{- include "covid-stats.selectorLabels" (list $ctx $component) | nindent 6 }}
{{- end }}
{{- end -}}

{{/* The questions' values (questions.enabled): the api's, with questions' own over them
     (replicas, autoscaling, pdb, resources). Its pods share the api's ConfigMap, Secrets,
     ServiceAccount and metrics job. include "covid-stats.questions.values" . | fromYaml */}}
{{- define "covid-stats.questions.values" -}}
{{- toYaml (mergeOverwrite (deepCopy .Values.api) (omit .Values.questions "enabled")) -}}
{{- end -}}
