"""Shared pytest wiring: the control-plane fixtures come from the harness package."""

pytest_plugins = ["mailshard_harness.pytest_plugin"]
