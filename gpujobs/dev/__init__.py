"""Local development only: ``python -m gpujobs dev`` (``make run``), its supervisor and the embedded
servers it starts, plus what the tests and benchmarks share (a Sentinel deployment, ``wait_for``).

Production never runs this code: it sets ``DATABASE_URL`` and ``REDIS_URL``. The one module the service
reads is ``embedded_env``, for the addresses a running ``make run`` recorded (unset variables only).
"""
