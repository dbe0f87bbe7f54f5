"""OpenAI-style error objects: every failure leaves as {"error": {message, type, param, code}}
(Ollama's API as {"error": message}, Anthropic's as {"type": "error", "error": {type, message}})."""
from __future__ import annotations

import json
from typing import Any

import pydantic
from aiohttp import web

INVALID_REQUEST = "invalid_request_error"


class APIError(Exception):
    """An error the client sees; raised anywhere in a handler, rendered by the error middleware."""

    def __init__(self, status: int, message: str, type: str = INVALID_REQUEST, param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def anthropic_body(self) -> dict[str, Any]:
        """The error as Anthropic's API writes it (its event or body, less the "type": "error")."""
        kind = _ANTHROPIC_TYPES.get(self.status, "api_error" if self.status >= 500 else "invalid_request_error")
        return {"error": {"type": kind, "message": self.message}}

    def response(self, dialect: str = "openai") -> web.Response:
        """The error as OpenAI writes it, as Ollama does ({"error": "message"}) or as Anthropic does."""
        body = ({"error": self.message} if dialect == "ollama" else {"type": "error", **self.anthropic_body()}
                if dialect == "anthropic" else self.body())
        return web.Response(status=self.status, text=json.dumps(body), content_type="application/json",
                            headers=self.headers)


_ANTHROPIC_TYPES = {401: "authentication_error", 403: "permission_error", 404: "not_found_error",
                    413: "request_too_large", 429: "rate_limit_error", 503: "overloaded_error"}


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def model_not_found(name: str, served: list[str]) -> APIError:
    return APIError(404, f"The model {name!r} does not exist; this server serves {served[0]!r}.",
                    param="model", code="model_not_found")


def unauthorized() -> APIError:
    return APIError(401, "Invalid or missing API key: send 'Authorization: Bearer <key>'.",
                    type="authentication_error", code="invalid_api_key",
                    headers={"WWW-Authenticate": 'Bearer realm="fastcodellama"'})


def overloaded(message: str, retry_after: int) -> APIError:
    return APIError(429, message, type="rate_limit_error", code="queue_full",
                    headers={"Retry-After": str(retry_after)})


def shutting_down(retry_after: int = 5) -> APIError:
    return APIError(503, "The server is shutting down; retry on another instance or later.",
                    type="server_error", code="shutting_down", headers={"Retry-After": str(retry_after)})


def request_timeout(seconds: float) -> APIError:
    return APIError(408, f"The request did not finish within the server's limit of {seconds:g} s.",
                    type="timeout_error", code="request_timeout")


def internal(message: str) -> APIError:
    return APIError(500, message, type="server_error", code="internal_error")


def from_http_exception(exc: web.HTTPException) -> APIError:
    """aiohttp's own errors (404 route, 405 method, 413 body size) as OpenAI error objects."""
    status = exc.status
    if status == 413:
        message = f"Request body too large: {exc.text or 'over the server limit'}"
        return APIError(413, message, code="request_too_large")
    message = exc.reason if not exc.text or exc.text.startswith(f"{status}:") else exc.text
    kind = INVALID_REQUEST if status < 500 else "server_error"
    return APIError(status, message, type=kind, code={404: "not_found", 405: "method_not_allowed"}.get(status),
                    headers={k: v for k, v in exc.headers.items() if k.lower() == "allow"})


def from_validation_error(err: pydantic.ValidationError) -> APIError:
    """The first problem pydantic found, named by its field."""
    first = err.errors(include_url=False)[0]
    loc = [str(p) for p in first.get("loc", ())]
    # Union members add their type name to the location (prompt.str, prompt.list[int].3): keep the field.
    param = loc[0] if loc else None
    where = ".".join(p for p in loc if not _is_type_tag(p)) or "body"
    message = first.get("msg", "invalid value").removeprefix("Value error, ")
    if first.get("type") == "missing":
        return bad_request(f"Missing required parameter {where!r}.", param=param, code="missing_parameter")
    return bad_request(f"Invalid value for {where!r}: {message}.", param=param, code="invalid_value")


def _is_type_tag(part: str) -> bool:
    return part in ("str", "int", "float", "bool") or part.startswith(("list[", "function-", "constrained-"))
