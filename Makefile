# Mailshard developer entry points. `make test` is the README's test command and what CI runs.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PYTEST_MARKERS ?= unit or integration or mail

.PHONY: help venv check lint typecheck layers crds crds-check chart-lint test test-unit test-integration test-mail images image-deps mail-deps \
        build-k8s cluster-up cluster-down cluster-status demo clean \
        node-deps build-node e2e-up e2e-down test-e2e e2e-kind

help:
	@echo "make test          install what is needed, run checks and every tier this machine can run"
	@echo "make demo          the operator, the example shards and mail through the proxy on a local cluster (see README)"
	@echo "make cluster-up    start a local control plane (prints its KUBECONFIG)"
	@echo "make cluster-down  stop it"
	@echo "make test-unit | test-integration | test-mail   one tier"
	@echo "make e2e-up        start this machine's real node (root; after make images) and print its KUBECONFIG"
	@echo "make e2e-down      stop it, and check it left the host as it found it"
	@echo "make test-e2e      the e2e tier on the real node (or on KUBECONFIG); make e2e-kind: on a 3-node kind cluster"

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	@touch $@

venv: $(STAMP)

lint: venv
	$(BIN)/ruff check operator tests bench e2e
	$(BIN)/ruff format --check operator tests bench e2e

typecheck: venv
	$(BIN)/mypy

layers: venv
	$(BIN)/lint-imports

crds: venv
	$(BIN)/python -m mailshard crds --write crds/

crds-check: venv
	$(BIN)/python -m mailshard crds --check crds/

# helm lint --strict with every CI values file. Our Helm is built without the Kubernetes version stamped in
# (it would assume 1.20 and refuse the chart's kubeVersion), hence --kube-version.
CHART := charts/mailshard-operator
chart-lint: venv build-k8s
	@helm=$$($(BIN)/python -c 'from mailshard_harness import build, versions; print(build.bin_path(versions.HELM_BINARY))'); \
	for values in $(CHART)/ci/*-values.yaml; do \
		echo "helm lint --strict $(CHART) --values $$values"; \
		$$helm lint --strict --kube-version 1.33.0 $(CHART) --values $$values || exit 1; \
	done

check: lint typecheck layers crds-check chart-lint

build-k8s: venv
	$(BIN)/python -m mailshard_harness build

mail-deps:
	bash .ci/install-mail-deps
	bash .ci/install-cyrus-prefix

# podman, buildah, debootstrap and runc from Debian: image builds are offline but for apt.
image-deps:
	bash .ci/install-image-deps

images: venv image-deps
	$(BIN)/python -m mailshard_harness images

# pytest exits 5 when a selection collects no test: that is not a failure of the code.
define run_pytest
	$(BIN)/pytest -m "$(1)" $(2); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest: no tests selected by -m '$(1)'"; exit 0; fi; exit $$rc
endef

# Every tier this machine can run: unit, integration and mail in one session (one KWOK control plane), then
# e2e on the real node (its own control plane, bound to the node's bridge).
test: check build-k8s mail-deps images node-deps build-node
	$(call run_pytest,$(PYTEST_MARKERS),)
	$(call run_pytest,e2e,e2e)

test-unit: venv
	$(call run_pytest,unit,)

test-integration: venv build-k8s
	$(call run_pytest,integration,)

test-mail: venv mail-deps
	$(call run_pytest,mail,)

NAME ?= default

cluster-up: venv build-k8s
	$(BIN)/python -m mailshard_harness up --name $(NAME)

cluster-down: venv
	$(BIN)/python -m mailshard_harness down --name $(NAME)

cluster-status: venv
	$(BIN)/python -m mailshard_harness status

# As root and without KUBECONFIG the demo runs real pods on this machine's node, so it first installs the node's
# packages, builds our images and the kubelet (cached after the first run). Elsewhere it needs only the control plane.
demo: venv build-k8s
	@if [ -z "$$KUBECONFIG" ] && [ "$$(id -u)" = 0 ]; then $(MAKE) --no-print-directory node-deps images build-node; fi
	$(BIN)/python -m mailshard_harness demo

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache

# The real-node (e2e) tier. containerd, runc, CNI plugins, iptables, podman and gcc from Debian.
node-deps:
	bash .ci/install-node-deps

build-node: venv
	$(BIN)/python -m mailshard_harness build --with-kubelet

# The node imports the images `make images` built last; run that after changing what they carry.
e2e-up: venv node-deps build-node
	$(BIN)/python -m mailshard_harness node-up

e2e-down: venv
	$(BIN)/python -m mailshard_harness node-down

test-e2e: venv node-deps build-node
	$(call run_pytest,e2e,e2e)

# The same tests on a 3-node kind cluster (needs kind and docker; not possible on our machines): our images,
# built by podman, go into docker and are loaded into every node with `kind load docker-image`.
KIND ?= kind
KIND_CLUSTER ?= mailshard-e2e
KIND_IMAGE ?=
KIND_KUBECONFIG := $(CURDIR)/.cluster/kind-$(KIND_CLUSTER).kubeconfig
E2E_IMAGES := operator dovecot cyrus
MAILSHARD_VERSION = $(shell $(BIN)/python -c 'import mailshard; print(mailshard.__version__)')

e2e-kind: venv images
	@mkdir -p $(dir $(KIND_KUBECONFIG))
	$(KIND) get clusters | grep -qx '$(KIND_CLUSTER)' || \
	  $(KIND) create cluster --name $(KIND_CLUSTER) --config e2e/kind-config.yaml --wait 300s \
	    $(if $(KIND_IMAGE),--image $(KIND_IMAGE))
	$(KIND) get kubeconfig --name $(KIND_CLUSTER) > $(KIND_KUBECONFIG)
	set -e; for name in $(E2E_IMAGES); do \
	  podman save --format docker-archive localhost/mailshard/$$name:$(MAILSHARD_VERSION) | docker load; \
	  docker tag localhost/mailshard/$$name:$(MAILSHARD_VERSION) mailshard/$$name:$(MAILSHARD_VERSION); \
	  $(KIND) load docker-image mailshard/$$name:$(MAILSHARD_VERSION) --name $(KIND_CLUSTER); \
	done
	export MAILSHARD_KUBECONFIG=$(KIND_KUBECONFIG); $(call run_pytest,e2e,e2e)
