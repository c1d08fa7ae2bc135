"""The errors an API call can answer with: one class per status, one JSON shape."""

from __future__ import annotations


class ApiError(Exception):
    """An error a client may see: ``status`` and a message safe to show."""

    status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(ApiError):
    """400: the request is malformed."""

    status = 400


class Unauthorized(ApiError):
    """401: no valid credentials."""

    status = 401


class Forbidden(ApiError):
    """403: credentials are valid but not enough."""

    status = 403


class NotFound(ApiError):
    """404: no such thing."""

    status = 404


class Conflict(ApiError):
    """409: the request contradicts the current state."""

    status = 409


class PayloadTooLarge(ApiError):
    """413: the body is over the cap."""

    status = 413


class TooManyRequests(ApiError):
    """429: slow down; ``retry_after`` seconds, when known, go in ``Retry-After``."""

    status = 429

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class BadGateway(ApiError):
    """502: an agent refused or could not be reached."""

    status = 502


class GatewayTimeout(ApiError):
    """504: an agent did not answer in time."""

    status = 504


class ServiceUnavailable(ApiError):
    """503: too busy to take this now; try again shortly."""

    status = 503
