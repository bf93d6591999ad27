"""Pydantic models of the mailshard.io custom resources: the one source of truth for the CRDs."""
