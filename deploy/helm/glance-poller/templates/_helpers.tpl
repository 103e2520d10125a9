{{- define "glance-poller.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "glance-poller.fullname" -}}
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

{{- define "glance-poller.selectorLabels" -}}
app.kubernetes.io/name: {{ include "glance-poller.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "glance-poller.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "glance-poller.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "glance-poller.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "glance-poller.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "glance-poller.claimName" -}}
{{- default (printf "%s-state" (include "glance-poller.fullname" .)) .Values.persistence.existingClaim }}
{{- end }}

{{/* The environment variable that carries partner $index's key (or its file's path). */}}
{{- define "glance-poller.keyEnv" -}}
{{- $suffix := ternary "_FILE" "" .mountAsFile -}}
{{- if eq (int .index) 0 -}}
GLANCE_API_KEY{{ $suffix }}
{{- else -}}
GLANCE_API_KEY_{{ int64 .partner.id }}{{ $suffix }}
{{- end -}}
{{- end }}

{{/*
The daemon's configuration: the values' config, with [[partners]] and [server] written from
partners and server. Returns a map (as YAML) for glance-poller.toml.
*/}}
{{- define "glance-poller.settings" -}}
{{- $settings := deepCopy (default (dict) .Values.config) -}}
{{- $server := merge (dict "port" .Values.server.port "host" "0.0.0.0") (default (dict) (get $settings "server")) -}}
{{- $_ := set $server "port" .Values.server.port -}}
{{- $_ := set $settings "server" $server -}}
{{- $partners := list -}}
{{- if not .Values.partners }}{{ fail "partners: list at least one Glance partner (id and secretKey)" }}{{ end -}}
{{- range $index, $partner := .Values.partners -}}
{{- $partner = default (dict) $partner -}}
{{- $id := get $partner "id" | required (printf "partners[%d].id: the partner's Glance group id" $index) -}}
{{- $_ := get $partner "secretKey" | required (printf "partners[%d].secretKey: the key of apiKeys.existingSecret holding its API key" $index) -}}
{{- $entry := dict "id" (int64 $id) -}}
{{- if and $.Values.apiKeys.mountAsFile (gt $index 0) -}}
{{- $_ := set $entry "api_key_file" (printf "%s/%s" $.Values.apiKeys.mountPath $partner.secretKey) -}}
{{- else if not $.Values.apiKeys.mountAsFile -}}
{{- $_ := set $entry "api_key_env" (include "glance-poller.keyEnv" (dict "index" $index "partner" $partner "mountAsFile" false)) -}}
{{- end -}}
{{- $partners = append $partners $entry -}}
{{- end -}}
{{- $_ := set $settings "partners" $partners -}}
{{- toYaml $settings -}}
{{- end }}

{{/* A TOML value: a string, a boolean, a number (integral ones as integers) or an array. */}}
{{- define "glance-poller.tomlValue" -}}
{{- $kind := kindOf . -}}
{{- if eq $kind "string" -}}
{{ toJson . }}
{{- else if eq $kind "bool" -}}
{{ . }}
{{- else if has $kind (list "int" "int64" "float64") -}}
{{- if eq (float64 .) (floor (float64 .)) }}{{ int64 . }}{{ else }}{{ . }}{{ end -}}
{{- else if eq $kind "slice" -}}
[{{ range $i, $item := . }}{{ if $i }}, {{ end }}{{ include "glance-poller.tomlValue" $item }}{{ end }}]
{{- else -}}
{{- fail (printf "config: cannot write %v (%s) as a TOML value" . $kind) -}}
{{- end -}}
{{- end }}

{{/* One TOML table's key = value lines. */}}
{{- define "glance-poller.tomlTable" -}}
{{- $table := .table -}}
{{- range $key := keys $table | sortAlpha }}
{{- $value := index $table $key }}
{{- if kindIs "map" $value }}
{{- fail (printf "config.%s.%s: the daemon's sections hold no sub-tables" $.name $key) }}
{{- end }}
{{- if not (kindIs "invalid" $value) }}
{{ $key }} = {{ include "glance-poller.tomlValue" $value }}
{{- end }}
{{- end }}
{{- end }}

{{/* The settings map as a TOML document: each section a [table], lists of maps [[tables]]. */}}
{{- define "glance-poller.toml" -}}
{{- $settings := . -}}
{{- range $name := keys $settings | sortAlpha }}
{{- $value := index $settings $name }}
{{- if kindIs "map" $value }}

[{{ $name }}]
{{- include "glance-poller.tomlTable" (dict "name" $name "table" $value) }}
{{- else if and (kindIs "slice" $value) $value (kindIs "map" (first $value)) }}
{{- range $table := $value }}

[[{{ $name }}]]
{{- include "glance-poller.tomlTable" (dict "name" $name "table" $table) }}
{{- end }}
{{- else }}
{{- fail (printf "config.%s: the daemon's configuration has sections only ([%s])" $name $name) }}
{{- end }}
{{- end }}
{{- end }}
