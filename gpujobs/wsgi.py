"""The WSGI entry point for gunicorn: ``gunicorn gpujobs.wsgi:app``."""

from gpujobs import create_app

app = create_app()
