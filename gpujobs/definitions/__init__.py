"""Built-in job definitions; importing this package registers them all (the registry is gpujobs.registry)."""

from gpujobs.definitions import call_api, routes, samples, video, webhook_send  # noqa: F401  (each registers its own)
