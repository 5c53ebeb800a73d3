"""WSGI entry point for gunicorn and other servers: settings come from the ``DHO_*`` environment."""

from sharing_api.serving import worker_app
from sharing_api.settings import Settings

app = worker_app(Settings())
