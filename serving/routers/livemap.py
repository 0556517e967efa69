"""GET /: the live map page. Its script and style are served by the app itself (no CDN, no map tiles)."""

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
router = APIRouter(tags=["map"])


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def map_page() -> HTMLResponse:
    return HTMLResponse((STATIC_DIR / "index.html").read_text(encoding="utf-8"))
