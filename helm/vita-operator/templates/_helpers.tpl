{{- define "vita-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "vita-operator.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "vita-operator.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "vita-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "vita-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "vita-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "vita-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "vita-operator.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The enabled job backends, comma-separated; the default backend must be one of them. */}}
{{- define "vita-operator.enabledBackends" -}}
{{- $enabled := list -}}
{{- range $name := list "pytorchjob" "trainjob" -}}
{{- if (index $.Values.backends $name).enabled -}}
{{- $enabled = append $enabled $name -}}
{{- end -}}
{{- end -}}
{{- if not (has .Values.defaultBackend $enabled) -}}
{{- fail (printf "defaultBackend %q is not enabled: set backends.%s.enabled=true" .Values.defaultBackend .Values.defaultBackend) -}}
{{- end -}}
{{- join "," $enabled -}}
{{- end -}}

{{/* An allow-list in a message: its items, or "none" */}}
{{- define "vita-operator.allowedList" -}}
{{- if . }}{{ join ", " . }}{{ else }}none{{ end }}
{{- end }}
