"""The browser page ``wsicl serve`` serves at ``/``: a fixed set of static files from
``web/`` (the page, its script and style, and the vendored NiiVue build), each answered
with a strict Content-Security-Policy. The files are public, as a login page is: they hold
no data of the server, and everything the page shows comes through the token-protected
API. No other path is read from disk."""
from pathlib import Path
from typing import Dict, Optional, Tuple

WEB_FOLDER = Path(__file__).resolve().parent / "web"

PAGE_FILES: Dict[str, Tuple[str, str]] = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/web/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/web/style.css": ("style.css", "text/css; charset=utf-8"),
    "/web/niivue.umd.js": ("niivue.umd.js", "text/javascript; charset=utf-8"),
    "/web/NIIVUE_LICENSE.txt": ("NIIVUE_LICENSE.txt", "text/plain; charset=utf-8"),
}
"""URL path -> (file in :data:`WEB_FOLDER`, media type): everything the page loads."""

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "connect-src 'self' blob:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
"""Only the server's own files and API; no inline script or style, no third party."""

HEADERS = {"Content-Security-Policy": CONTENT_SECURITY_POLICY,
           "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
           "Cache-Control": "no-cache"}


def page_file(path: str) -> Optional[Tuple[bytes, str]]:
    """The bytes and media type of the page's file at URL ``path``, or None."""
    entry = PAGE_FILES.get(path)
    if entry is None:
        return None
    name, media_type = entry
    return (WEB_FOLDER / name).read_bytes(), media_type
