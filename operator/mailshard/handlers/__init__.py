"""kopf handlers: decorators plus one call into a service each."""
