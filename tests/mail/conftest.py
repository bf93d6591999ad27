"""Registers the mail tier's fixtures; the helpers live in mail_support, a name no other tier's module shares."""

from mail_support import dovecot_installed, make_pair, proxy

__all__ = ["dovecot_installed", "make_pair", "proxy"]
