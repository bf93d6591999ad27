{{/*
Names and labels shared by every template.
*/}}

{{/* The chart name, or nameOverride. */}}
{{- define "mailshard-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The prefix of every object name: fullnameOverride, else the release name followed by the chart
name unless the release name already contains it. Cluster-scoped objects (ClusterRole,
ClusterRoleBinding, ClusterKopfPeering) carry it, so two releases never collide.
*/}}
{{- define "mailshard-operator.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := include "mailshard-operator.name" . }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "mailshard-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels that select the operator pods; never change them after a release exists. */}}
{{- define "mailshard-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mailshard-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "mailshard-operator.labels" -}}
helm.sh/chart: {{ include "mailshard-operator.chart" . }}
{{ include "mailshard-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: mailshard
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "mailshard-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "mailshard-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "mailshard-operator.peeringName" -}}
{{- default (include "mailshard-operator.fullname" .) .Values.peering.name }}
{{- end }}

{{- define "mailshard-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
