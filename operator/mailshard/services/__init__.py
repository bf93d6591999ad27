"""Reconcile and failover services: the only layer that reads and writes the Kubernetes API."""
