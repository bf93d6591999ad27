"""The proxy tier's data plane: the proxy's Dovecot configuration (`render`) and the routing sidecar (`sidecar`).

The proxies are what users connect to; they follow the routing table that the
operator publishes (`mailshard.api.routing`). Nothing here is imported by the
operator itself: the sidecar runs in the proxy pods.
"""
