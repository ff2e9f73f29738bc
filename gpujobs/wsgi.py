"""The WSGI entry point for gunicorn: ``gunicorn gpujobs.wsgi:app``."""

from gpujobs import create_app
from gpujobs.config import ConfigError

app = create_app()
# Several web processes must sign dashboard sessions with one key; a random one per process would
# make sessions and CSRF tokens fail at random. `make run` sets one for its processes.
if not app.config.get("GPUJOBS_SECRET_KEY"):
    raise ConfigError("GPUJOBS_SECRET_KEY must be set for the web server (a long random string)")
