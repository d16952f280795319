"""The annotators' review page (``infgate ui serve``): FastAPI + server-rendered HTML."""

from infgate.plugins.review_ui.app import create_app

__all__ = ["create_app"]
