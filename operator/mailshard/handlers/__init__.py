"""kopf handlers: decorators plus one call into a service each.

Importing this package registers every handler with kopf.
"""

from mailshard.handlers import clusters, failover, lifecycle, shards

__all__ = ["clusters", "failover", "lifecycle", "shards"]
