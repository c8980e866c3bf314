"""The labeling web app (`tether serve`): FastAPI, server-rendered Jinja2 pages, a little plain
JavaScript. `create_app(workspace)` builds it; see `tether.web.app`."""

from tether.web.app import WebSettings, create_app

__all__ = ["WebSettings", "create_app"]
