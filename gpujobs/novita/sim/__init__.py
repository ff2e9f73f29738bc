"""Internals of the Novita simulator; the public entry points live in `gpujobs.novita.simulator`."""
