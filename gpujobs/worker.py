"""The ``celery -A gpujobs.worker`` target: the Celery app of a Flask app built from the environment."""

from gpujobs import create_app

flask_app = create_app()
celery_app = flask_app.extensions["celery"]
