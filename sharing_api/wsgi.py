"""WSGI entry point for gunicorn and other servers: settings come from the ``DHO_*`` environment."""

from sharing_api.app import create_app

app = create_app()
