"""The web console: static files served at ``/`` (same origin, same tokens), and
``GET /api/v1/me`` telling a page what its token may do."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import FileResponse

from shoal_api.deps import Who
from shoal_api.models import Me
from shoal_api.problems import ERRORS

ASSETS = Path(__file__).resolve().parents[1] / "console"
router = APIRouter(tags=["console"])

# What the page may load: only files of the console itself, by name.
_TYPES = {".js": "text/javascript", ".css": "text/css", ".html": "text/html",
          ".svg": "image/svg+xml"}


@router.get("/", include_in_schema=False)
async def index() -> FileResponse:
    return _file("index.html")


@router.get("/console/{path:path}", include_in_schema=False)
async def asset(path: str) -> FileResponse:
    return _file(path)


def _file(path: str) -> FileResponse:
    target = (ASSETS / path).resolve()
    if ASSETS not in target.parents or not target.is_file() or target.suffix not in _TYPES:
        raise HTTPException(404, {"message": f"no console file {path!r}"
                                             + ("" if (ASSETS / "vendor").is_dir() else
                                                " (run make to build the console's assets)")})
    return FileResponse(target, media_type=_TYPES[target.suffix],
                        headers={"Cache-Control": "no-cache"})


@router.get("/api/v1/me", tags=["security"], responses=ERRORS, response_model=Me)
async def me(who: Who, request: Request) -> dict[str, Any]:
    """The role and name of the bearer token (401 without a valid one when tokens are
    enabled): the console shows only the controls that role may use."""
    return {"role": who.role.name, "auth": request.app.state.tokens.enabled,
            "name": who.name}
