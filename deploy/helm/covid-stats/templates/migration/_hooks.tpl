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
