"""HTTP routes: the only modules that touch ``flask.request``."""
