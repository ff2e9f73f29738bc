"""Benchmarks and the fault-injection suite (``make bench``, ``make faults``)."""
