"""Built-in job definitions; importing this package registers them all."""

from gpujobs.definitions import call_api, gpu, routes, samples, video  # noqa: F401  (each registers its own)
from gpujobs.definitions.registry import Definition, all_definitions, get_definition

__all__ = ["Definition", "all_definitions", "get_definition"]
