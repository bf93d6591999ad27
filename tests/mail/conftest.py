"""Registers the mail tier's fixtures; the helpers live in mail_support, a name no other tier's module shares."""

from mail_support import cyrus_preload_library, dovecot_installed, make_cyrus_pair, make_pair, proxy

__all__ = ["cyrus_preload_library", "dovecot_installed", "make_cyrus_pair", "make_pair", "proxy"]
