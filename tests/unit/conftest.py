"""Unit tests: pure logic only, each module marked `unit`, reading nothing but repository files.

Shared factories live in `unit_support.py`, importable because pytest puts this
directory on sys.path for the modules in it.
"""
