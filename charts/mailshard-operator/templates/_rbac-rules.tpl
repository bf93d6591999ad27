{{/*
Generated from mailshard.rbac by `python -m mailshard crds --write crds/`.
Do not edit: change operator/mailshard/rbac.py and regenerate.
*/}}
{{- define "mailshard-operator.rbacClusterRules" -}}
# checking spec.storage.storageClassName
- apiGroups: ["storage.k8s.io"]
  resources: ["storageclasses"]
  verbs: ["get", "list"]
# kopf: discovering the namespaces to watch
- apiGroups: [""]
  resources: ["namespaces"]
  verbs: ["list", "watch"]
# which node a member's local volume lives on, and whether that node is still there and Ready
- apiGroups: [""]
  resources: ["persistentvolumes", "nodes"]
  verbs: ["get"]
# kopf: discovering our CRDs
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["list", "watch"]
# kopf peering across the cluster: one active operator
- apiGroups: ["kopf.dev"]
  resources: ["clusterkopfpeerings"]
  verbs: ["get", "list", "watch", "patch"]
{{- end }}
{{- define "mailshard-operator.rbacNamespacedRules" -}}
# our resources; kopf's finalizer and bookkeeping annotations; the switchover request removed
- apiGroups: ["mailshard.io"]
  resources: ["mailshards", "mailclusters"]
  verbs: ["get", "list", "watch", "patch"]
# status written by the reconcilers
- apiGroups: ["mailshard.io"]
  resources: ["mailshards/status", "mailclusters/status"]
  verbs: ["get", "patch"]
# owner references with blockOwnerDeletion (where OwnerReferencesPermissionEnforcement is on)
- apiGroups: ["mailshard.io"]
  resources: ["mailshards/finalizers", "mailclusters/finalizers"]
  verbs: ["update"]
# one StatefulSet per member
- apiGroups: ["apps"]
  resources: ["statefulsets"]
  verbs: ["get", "list", "watch", "create", "patch"]
# the proxy tier of each MailCluster
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "patch"]
# the proxies' own identity; read back by name, never listed
- apiGroups: [""]
  resources: ["serviceaccounts"]
  verbs: ["get", "create", "patch"]
# the proxies may read their routing ConfigMap and nothing else (a Role with resourceNames)
- apiGroups: ["rbac.authorization.k8s.io"]
  resources: ["roles", "rolebindings"]
  verbs: ["get", "create", "patch"]
# member and master Services, runtime and routing ConfigMaps
- apiGroups: [""]
  resources: ["services", "configmaps"]
  verbs: ["get", "list", "watch", "create", "patch"]
# <shard>-replication (created once), <shard>-users (kept current), the users Secrets a MailCluster names; by name, never listed
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "create", "patch"]
# member readiness and addresses; the role label; a member whose volume is lost is started afresh
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list", "watch", "patch", "delete"]
# growing mail volumes; deleting them under reclaimPolicy Delete, or when lost with their node
- apiGroups: [""]
  resources: ["persistentvolumeclaims"]
  verbs: ["get", "patch", "delete"]
# one budget per pair and per proxy tier
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["get", "list", "watch", "create", "patch"]
# Events about our resources (ours and kopf's)
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
# kopf peering per watched namespace: one active operator
- apiGroups: ["kopf.dev"]
  resources: ["kopfpeerings"]
  verbs: ["get", "list", "watch", "patch"]
{{- end }}
