"""Chart tests: `helm template` and `helm lint` over charts/mailshard-operator, marked `unit` (a few seconds).

They need the pinned Helm that `make build-k8s` builds; without it they skip with
that hint (CI always has it: `make check` and `make test` build it first).
Helpers live in `chart_support.py`, importable because pytest puts this
directory on sys.path for the modules in it.
"""
