"""Domain errors and their one rendering: RFC 9457 `application/problem+json`."""

from __future__ import annotations

import logging
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

PROBLEM_JSON = "application/problem+json"
_log = logging.getLogger("mailops.errors")


class DomainError(Exception):
    """An error the caller can act on: it carries its HTTP status and a stable code."""

    status: int = 400
    code: str = "bad_request"
    title: str = "Bad request"

    def __init__(
        self, detail: str, *, field: str | None = None, code: str | None = None, **extra: Any
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.field = field
        if code is not None:
            self.code = code
        self.extra = extra

    def problem(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": f"https://mailops.dev/problems/{self.code}",
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            "code": self.code,
        }
        if self.field is not None:
            body["errors"] = [{"field": self.field, "message": self.detail}]
        body.update(self.extra)
        return body

    def headers(self) -> dict[str, str] | None:
        """HTTP headers the answer carries besides the problem body."""
        return None


class Unauthorized(DomainError):
    status, code, title = 401, "unauthorized", "Authentication required"

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": "Bearer"}


class Forbidden(DomainError):
    status, code, title = 403, "forbidden", "Not allowed"


class NotFound(DomainError):
    status, code, title = 404, "not_found", "Not found"


class Conflict(DomainError):
    status, code, title = 409, "conflict", "Conflict"


class Gone(DomainError):
    status, code, title = 410, "gone", "Gone"


class Unprocessable(DomainError):
    status, code, title = 422, "unprocessable", "Unprocessable request"


class Unavailable(DomainError):
    """503. `location`: where what was saved anyway can be looked up (a job's status)."""

    status, code, title = 503, "unavailable", "Service unavailable"

    def __init__(
        self,
        detail: str,
        *,
        retry_after: int | None = None,
        location: str | None = None,
        **kwargs: Any,
    ) -> None:
        if location is not None:
            kwargs["location"] = location
        super().__init__(detail, **kwargs)
        self.retry_after = retry_after  # seconds
        self.location = location

    def headers(self) -> dict[str, str] | None:
        headers = {}
        if self.retry_after is not None:
            headers["Retry-After"] = str(self.retry_after)
        if self.location is not None:
            headers["Location"] = self.location
        return headers or None


_PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["type", "title", "status", "detail", "code"],
    "properties": {
        "type": {"type": "string", "format": "uri"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "code": {"type": "string", "description": "Stable, for programs to branch on"},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"field": {"type": "string"}, "message": {"type": "string"}},
            },
        },
    },
}
_PROBLEMS = {
    400: "Malformed request body (not JSON)",
    401: "No or unknown API key",
    403: "Role or department not allowed",
    404: "Not found",
    409: "Conflicts with the current state",
    410: "Gone: used, expired or superseded",
    422: "Invalid input (the problem names the field)",
    503: "The mail server or another service it needs did not answer, or the service is "
    "busy; retry later (after Retry-After, where it is sent)",
}


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for these error statuses: each an RFC 9457 problem+json body, the
    `Problem` schema that `install_error_handlers` publishes once for the document."""
    return {
        status: {
            "description": _PROBLEMS[status],
            "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}},
            **({"headers": _PROBLEM_HEADERS[status]} if status in _PROBLEM_HEADERS else {}),
        }
        for status in statuses
    }


def openapi_header(description: str, **schema: str) -> dict[str, Any]:
    """An OpenAPI response header: what it says, and its schema (a string unless told)."""
    return {"description": description, "schema": {"type": "string", **schema}}


# The headers some problems carry, declared where they are answered.
_PROBLEM_HEADERS = {
    401: {"WWW-Authenticate": openapi_header("Bearer: the scheme an API key is sent in")},
    503: {
        "Retry-After": openapi_header("Seconds to wait before asking again", type="integer"),
        "Location": openapi_header("Where what was saved anyway is followed (a job's status)"),
    },
}


def problem_response(
    status: int, body: dict[str, Any], headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def _field_name(location: tuple[Any, ...] | list[Any]) -> str:
    # ("body", "address") -> "address"; ("query", "limit") -> "limit"; keep list indexes.
    parts = [str(p) for p in location if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or "body"


def _error_field(error: Any) -> str:
    """The field a validation error is about: its location, and within it the field a check
    across fields names (shared.schemas.field_error)."""
    where = _field_name(error.get("loc", ()))
    named = (error.get("ctx") or {}).get("field")
    if not named:
        return where
    return str(named) if where == "body" else f"{where}.{named}"


async def _domain_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, DomainError)
    return problem_response(exc.status, exc.problem(), exc.headers())


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    malformed = next((e for e in exc.errors() if e.get("type") == "json_invalid"), None)
    if malformed is not None:  # not JSON at all: the request, not a value in it, is wrong
        message = f"the body is not JSON: {malformed.get('ctx', {}).get('error', 'invalid')}"
        return problem_response(
            400,
            {
                "type": "https://mailops.dev/problems/malformed_json",
                "title": "The body is not JSON",
                "status": 400,
                "detail": message,
                "code": "malformed_json",
                "errors": [{"field": "body", "message": message}],
            },
        )
    errors = [{"field": _error_field(e), "message": e.get("msg", "invalid")} for e in exc.errors()]
    summary = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
    return problem_response(
        422,
        {
            "type": "https://mailops.dev/problems/validation_failed",
            "title": "Request validation failed",
            "status": 422,
            "detail": summary,
            "code": "validation_failed",
            "errors": errors,
        },
    )


def _allowed_methods(request: Request) -> str:
    """Every method the OpenAPI document gives the request's path, and HEAD with GET.
    Starlette's own `Allow` names only the first route that matched the path, and each
    method of a path is a route of its own here."""
    methods: set[str] = set()
    for template, operations in request.app.openapi()["paths"].items():
        pattern = "[^/]+".join(re.escape(part) for part in re.split(r"\{[^}/]+\}", template))
        if re.fullmatch(pattern, request.url.path):
            methods |= {method.upper() for method in operations}
    if "GET" in methods:
        methods.add("HEAD")
    return ", ".join(sorted(methods))


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    headers = getattr(exc, "headers", None)
    if exc.status_code == 405:
        headers = {**(headers or {}), "Allow": _allowed_methods(request)}
    return problem_response(
        exc.status_code,
        {
            "type": f"https://mailops.dev/problems/{code}",
            "title": str(exc.detail),
            "status": exc.status_code,
            "detail": str(exc.detail),
            "code": code,
        },
        headers,
    )


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    _log.exception("unhandled error", extra={"path": request.url.path})
    return problem_response(
        500,
        {
            "type": "https://mailops.dev/problems/internal_error",
            "title": "Internal server error",
            "status": 500,
            "detail": "An unexpected error occurred; it has been logged.",
            "code": "internal_error",
        },
    )


def install_error_handlers(app: FastAPI) -> None:
    """Render every error the app can raise as problem+json, and publish its schema."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        document = generate()  # made once, then cached by FastAPI
        document.setdefault("components", {}).setdefault("schemas", {})["Problem"] = _PROBLEM_SCHEMA
        return document

    app.openapi = openapi  # type: ignore[method-assign]
    app.add_exception_handler(DomainError, _domain_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)
