"""Pure builders: parsed models in, Kubernetes manifests out. No API calls, no clock, no sleeps."""
