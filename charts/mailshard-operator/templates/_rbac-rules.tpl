{{/*
Generated from mailshard.rbac.RULES by `python -m mailshard crds --write crds/`.
Do not edit: change operator/mailshard/rbac.py and regenerate.
*/}}
{{- define "mailshard-operator.rbacRules" -}}
# our resources; kopf's finalizer and bookkeeping annotations
- apiGroups: ["mailshard.io"]
  resources: ["mailshards", "mailclusters"]
  verbs: ["get", "list", "watch", "patch", "update"]
# status written by the reconcilers
- apiGroups: ["mailshard.io"]
  resources: ["mailshards/status", "mailclusters/status"]
  verbs: ["get", "patch", "update"]
# owner references with blockOwnerDeletion
- apiGroups: ["mailshard.io"]
  resources: ["mailshards/finalizers", "mailclusters/finalizers"]
  verbs: ["update"]
# one StatefulSet per member
- apiGroups: ["apps"]
  resources: ["statefulsets"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
# the proxy tier of each MailCluster
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
# the proxies' own identity; read back by name, never listed
- apiGroups: [""]
  resources: ["serviceaccounts"]
  verbs: ["get", "create", "patch", "update", "delete"]
# the proxies may read their routing ConfigMap and nothing else (a Role with resourceNames)
- apiGroups: ["rbac.authorization.k8s.io"]
  resources: ["roles", "rolebindings"]
  verbs: ["get", "create", "patch", "update", "delete"]
# member and master Services, the runtime ConfigMap
- apiGroups: [""]
  resources: ["services", "configmaps"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
# the replication Secret (created once), each shard's users Secret (kept current); by name, never listed
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "create", "patch"]
# member readiness; role labels; fencing a dead master
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch", "patch", "delete"]
# growing mail volumes; reclaimPolicy Delete
- apiGroups: [""]
  resources: ["persistentvolumeclaims"]
  verbs: ["get", "list", "patch", "delete"]
# one budget per pair
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
# Events about our resources
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "patch"]
# Events through the newer API
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
# checking spec.storage.storageClassName
- apiGroups: ["storage.k8s.io"]
  resources: ["storageclasses"]
  verbs: ["get", "list"]
# node readiness for failover
- apiGroups: [""]
  resources: ["nodes"]
  verbs: ["get", "list", "watch"]
# kopf: discovering namespaces
- apiGroups: [""]
  resources: ["namespaces"]
  verbs: ["list", "watch"]
# kopf: discovering our CRDs
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["list", "watch"]
# kopf peering: one active operator
- apiGroups: ["kopf.dev"]
  resources: ["clusterkopfpeerings", "kopfpeerings"]
  verbs: ["get", "list", "watch", "patch"]
{{- end }}
