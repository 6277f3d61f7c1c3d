"""HTTP API: thin routers over `serving.engine`, built by `create_app` (see app.py)."""

from serving.api.app import ServerSettings, create_app

__all__ = ["ServerSettings", "create_app"]
