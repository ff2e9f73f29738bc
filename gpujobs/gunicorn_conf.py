"""The one gunicorn configuration: ``gunicorn -c python:gpujobs.gunicorn_conf`` (Procfile, compose, the image,
``make run`` and the benchmarks alike).

It lives in the package, so an installed wheel carries it and no checkout file is needed. Threaded
workers: a slow client (a video upload over a poor link) holds one thread, not a whole process, and the
worker keeps answering its heartbeat, so ``timeout`` no longer cuts long uploads. Options given on the
command line override these (``make run`` binds to 127.0.0.1).
"""

from __future__ import annotations

import os

from gpujobs.logs import gunicorn_logconfig_dict

wsgi_app = "gpujobs.wsgi:app"
bind = [f"0.0.0.0:{os.environ.get('PORT', '5000')}"]
# Processes x threads: the shape the benchmarks measure (bench/README.md); WEB_CONCURRENCY is the
# Procfile platforms' convention for the process count.
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
worker_class = "gthread"
threads = int(os.environ.get("GPUJOBS_WEB_THREADS", "8"))
# A worker that stops answering its arbiter this long is restarted; with threads, a slow request
# does not block the heartbeat, so this bounds hangs, not uploads.
timeout = 120
# Let in-flight requests (uploads included) finish on SIGTERM; compose and platforms wait longer.
graceful_timeout = 30
keepalive = 5
# No control socket (gunicorn 25.1+ opens one at $HOME/.gunicorn/gunicorn.ctl by default): nothing here
# uses gunicornc, two servers on one host would share the one path, and a read-only home would hold
# the server back. Older gunicorns ignore the setting.
control_socket_disable = True
# gunicorn's own lines (start-up, workers, the access log) in the service's format and level
# (GPUJOBS_LOG_FORMAT, GPUJOBS_LOG_LEVEL), through the same handler as every other log line.
accesslog = "-"
errorlog = "-"
logconfig_dict = gunicorn_logconfig_dict()
# Honour X-Forwarded-For/-Proto only from the proxy in front (its addresses, comma-separated; "*" when
# the network guarantees that only the proxy reaches the web process, as in compose).
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1")
secure_scheme_headers = {"X-FORWARDED-PROTO": "https"}
