"""WSGI entry point for gunicorn and other servers: settings come from the ``DHO_*`` environment."""

from sharing_api.app import create_app
from sharing_api.request_log import configure_json_logging

configure_json_logging()
app = create_app()
