"""Errors in the console as people read them: a human HTML page for a page or a form (JSON only
for the console's JSON routes), and bad ids answered 404 before any query runs."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler, request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException

from bot.console.deps import PREFIX, environment

MAX_ID = 2**31 - 1  # ids are INTEGER columns: a larger id names nothing (and would overflow SQL)
TITLES = {
    400: "Bad request",
    403: "Not allowed",
    404: "Not found",
    405: "Not allowed here",
    413: "Too large",
    422: "That input cannot be used",
    429: "Too many attempts",
}
_env = environment()


def valid_id(raw: str) -> bool:
    """Whether ``raw`` is a plain positive id that fits an INTEGER column."""
    return raw.isascii() and raw.isdigit() and 0 < int(raw) <= MAX_ID


def check_ids(request: Request) -> None:
    """A router dependency: every ``*_id`` in the path and ``?before=`` must be an id that can
    exist (1 .. 2**31-1), else 404 (never an overflow in the database)."""
    for name, value in request.path_params.items():
        if name.endswith("_id") and not valid_id(str(value)):
            raise HTTPException(404, "no such page: that id does not exist")
    before = request.query_params.get("before")
    if before is not None and before != "" and not valid_id(before):
        raise HTTPException(404, "no such page: that position does not exist")


async def check_form(request: Request) -> None:
    """A router dependency: a posted form with a NUL character is refused (400) before anything
    reads it (PostgreSQL cannot store one, and no person types one). The parsed form is cached on
    the request, so the route reads the same one."""
    if request.method != "POST" or not request.headers.get("content-type", "").startswith(
        ("application/x-www-form-urlencoded", "multipart/form-data")
    ):
        return
    form = await request.form()
    if any(isinstance(v, str) and "\x00" in v for v in form.values()):
        raise HTTPException(400, "the form holds a NUL character: remove it and send it again")


def _in_console(request: Request) -> bool:
    path = request.url.path
    return path == PREFIX or path.startswith(PREFIX + "/")


def wants_json(request: Request) -> bool:
    """The console's JSON routes (``*.json``, ``live``) and scripts asking for JSON get JSON."""
    path = request.url.path
    if path.endswith(".json") or path.endswith("/live"):
        return True
    accept = request.headers.get("accept", "")
    return "application/json" in accept and "text/html" not in accept


def error_page(
    request: Request, status_code: int, message: str, headers: dict[str, str] | None = None
) -> Response:
    """The console's error page: what went wrong in words, and where to go from here."""
    me = getattr(request.state, "console_principal", None)
    body = _env.get_template("error.html").render(
        request=request,
        me=me,
        prefix=PREFIX,
        status_code=status_code,
        title=TITLES.get(status_code, "Something went wrong"),
        message=message,
    )
    merged = {"Cache-Control": "no-store", **(headers or {})}
    return HTMLResponse(body, status_code=status_code, headers=merged)


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for error in exc.errors()[:5]:
        where = ".".join(str(x) for x in error.get("loc", ())[1:]) or "input"
        parts.append(f"{where}: {error.get('msg', 'invalid')}")
    return "; ".join(parts) or "the input is not valid"


def install_error_pages(app: FastAPI) -> None:
    """Console errors as HTML pages (JSON routes keep JSON); other paths keep FastAPI's answers.
    A path id that is not a number is 404 (no such page), other bad input 422 (400 for a NUL)."""

    async def on_http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if not _in_console(request) or exc.status_code < 400 or wants_json(request):
            return await http_exception_handler(request, exc)
        return error_page(request, exc.status_code, str(exc.detail), dict(exc.headers or {}))

    async def on_validation(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        if not _in_console(request):
            return await request_validation_exception_handler(request, exc)
        path_error = any(e.get("loc", ("",))[0] == "path" for e in exc.errors())
        status = 404 if path_error else 422
        message = "no such page" if path_error else _validation_message(exc)
        if wants_json(request):
            return JSONResponse({"detail": message}, status_code=status)
        return error_page(request, status, message)

    app.add_exception_handler(HTTPException, on_http)
    app.add_exception_handler(RequestValidationError, on_validation)
