"""Browser pages: the dashboard at `/` and the API docs, all served without any CDN."""

import os
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from starlette.responses import Response
from starlette.types import Scope

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
STATIC_URL = "/static"
# Swagger UI 5, ReDoc 2 and FastAPI's favicon, as shipped by fastapi-standalone-docs.
DOCS_ASSETS_PACKAGE = ("fastapi_standalone_docs", "static")
DOCS_ASSETS_URL = "/static/docs"
DOCS_URL = "/docs"
REDOC_URL = "/redoc"
OAUTH2_REDIRECT_URL = "/docs/oauth2-redirect"


class RevalidatedStaticFiles(StaticFiles):
    """Static files that browsers revalidate on every load (a 304 when unchanged).

    The dashboard's files keep their names across releases; without this, a browser's
    heuristic cache could pair a new index.html with an old dashboard.js.
    """

    def file_response(
        self,
        full_path: str | os.PathLike[str],
        stat_result: os.stat_result,
        scope: Scope,
        status_code: int = 200,
    ) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        response.headers.setdefault("Cache-Control", "no-cache")
        return response


def mount_pages(app: FastAPI) -> None:
    """Serve the dashboard at `/`, its files under `/static`, and offline `/docs` and `/redoc`."""
    # Mounted before /static, which would otherwise answer 404 for /static/docs/...
    app.mount(
        DOCS_ASSETS_URL,
        StaticFiles(packages=[DOCS_ASSETS_PACKAGE]),
        name="docs-assets",
    )
    app.mount(STATIC_URL, RevalidatedStaticFiles(directory=STATIC_DIR), name="static")

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    async def dashboard() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    if app.openapi_url is None:
        return
    openapi_url = app.openapi_url

    def root_of(request: Request) -> str:
        # Behind a proxy that strips a prefix, every URL in the page must carry it.
        return str(request.scope.get("root_path", "")).rstrip("/")

    @app.get(DOCS_URL, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = root_of(request)
        return get_swagger_ui_html(
            openapi_url=root + openapi_url,
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{root}{DOCS_ASSETS_URL}/swagger/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{DOCS_ASSETS_URL}/swagger/swagger-ui.css",
            swagger_favicon_url=f"{root}{DOCS_ASSETS_URL}/fastapi/favicon.png",
            oauth2_redirect_url=root + OAUTH2_REDIRECT_URL,
            init_oauth=app.swagger_ui_init_oauth,
            swagger_ui_parameters={
                **(app.swagger_ui_parameters or {}),
                "persistAuthorization": True,
                # The online validator would send the schema to a third party.
                "validatorUrl": None,
            },
        )

    @app.get(OAUTH2_REDIRECT_URL, include_in_schema=False)
    async def swagger_ui_oauth2_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get(REDOC_URL, include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = root_of(request)
        return get_redoc_html(
            openapi_url=root + openapi_url,
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}{DOCS_ASSETS_URL}/redoc/redoc.standalone.js",
            redoc_favicon_url=f"{root}{DOCS_ASSETS_URL}/fastapi/favicon.png",
            with_google_fonts=False,
        )

    # The packaged ReDoc bundle loads its footer logo from the page's own path.
    @app.get(f"{REDOC_URL}/logo-mini.svg", include_in_schema=False)
    async def redoc_logo(request: Request) -> RedirectResponse:
        return RedirectResponse(f"{root_of(request)}{DOCS_ASSETS_URL}/redoc/logo-mini.svg")
