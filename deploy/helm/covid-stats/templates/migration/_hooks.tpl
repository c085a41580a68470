{{/* When the migration Job runs. pre-upgrade: before the new release's pods roll. On a first
     install it can run before everything else only when the database and its credentials
     already exist (an external database with existingSecret); else it runs post-install
     (the fetcher's init container, statsFetcher.migrateOnStart, migrates before then). */}}
{{- define "covid-stats.migration.hooks" -}}
{{- if and (not .Values.postgresql.enabled) .Values.externalDatabase.existingSecret -}}
pre-install,pre-upgrade
{{- else -}}
post-install,pre-upgrade
{{- end -}}
{{- end -}}

{{/* The migration's annotations under Argo CD (gitops.enabled), beside Helm's, which Argo CD
     then ignores: Argo CD maps Helm's pre-upgrade (and pre-install) to PreSync, before the
     in-chart PostgreSQL of a first sync exists, so the Job would fail. Instead a Sync hook
     in wave 0: after the stores (wave -1) are healthy, before the api and the fetcher
     (wave 1) roll. include "covid-stats.migration.argocd" (list $ "0") */}}
{{- define "covid-stats.migration.argocd" -}}
{{- if (index . 0).Values.gitops.enabled }}
argocd.argoproj.io/hook: Sync
argocd.argoproj.io/sync-wave: {{ index . 1 | quote }}
argocd.argoproj.io/hook-delete-policy: BeforeHookCreation,HookSucceeded
{{- end }}
{{- end -}}
