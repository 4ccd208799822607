{{- define "kubeft.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "kubeft.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: kubeft
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "kubeft.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{/* The labels the operator puts on every trainer pod (kubeft.contract). */}}
{{- define "kubeft.trainerSelectorLabels" -}}
app.kubernetes.io/component: trainer
app.kubernetes.io/managed-by: kubeft
{{- end -}}

{{- define "kubeft.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "kubeft.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "kubeft.image" -}}
{{- printf "%s:%s" .repository (default $.appVersion .tag) -}}
{{- end -}}

{{/* The rules the operator needs on namespaced objects (Role or ClusterRole). */}}
{{- define "kubeft.namespacedRules" -}}
# delete: ttlSecondsAfterFinished removes finished jobs
- apiGroups: [kubeft.io]
  resources: [finetunejobs]
  verbs: [get, list, watch, patch, update, delete]
- apiGroups: [kubeft.io]
  resources: [finetunejobs/status]
  verbs: [get, patch, update]
# owned objects of each job: the trainer Job, its config, its identity, the headless Service of a
# job on several GPUs; its pods are read
- apiGroups: [batch]
  resources: [jobs]
  verbs: [get, list, watch, create, update, patch, delete]
- apiGroups: [""]
  resources: [pods, configmaps, serviceaccounts, services]
  verbs: [get, list, watch, create, update, patch, delete]
# web identity (spec.storage.roleArn): a token of the job's trainer ServiceAccount, exchanged
# through STS, so the operator's own storage checks read only what the job itself may
- apiGroups: [""]
  resources: [serviceaccounts/token]
  verbs: [create]
# Kueue: the namespace's default LocalQueue, and the trainer Job's Workload (read; spec.active
# is how a queued job is suspended and resumed)
- apiGroups: [kueue.x-k8s.io]
  resources: [localqueues]
  verbs: [get, list, watch]
- apiGroups: [kueue.x-k8s.io]
  resources: [workloads]
  verbs: [get, list, watch, patch]
- apiGroups: [rbac.authorization.k8s.io]
  resources: [roles, rolebindings]
  verbs: [get, list, watch, create, update, patch, delete]
# a job waits (ClaimNotFound) until the claims of its pvc:// sources exist
- apiGroups: [""]
  resources: [persistentvolumeclaims]
  verbs: [get]
# create: the job's own events; list: the Job controller's FailedCreate (a ResourceQuota refusal)
- apiGroups: ["", events.k8s.io]
  resources: [events]
  verbs: [create, patch, list]
{{- end -}}

{{- /* Reading Secrets: the storage credentials (config.json of the model, the dataset check,
spec.cleanup: Delete) and the registry Secret of export.oci. Granted per namespace: in each watched
namespace, or in cluster mode in each onboarded one (rbac.secrets). */ -}}
{{- define "kubeft.secretRules" -}}
# read the storage credentials to fetch the model's config.json for the VRAM estimate
- apiGroups: [""]
  resources: [secrets]
  verbs: [get]
{{- end -}}
