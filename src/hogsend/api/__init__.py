"""The HTTP API: FastAPI app factory, auth and scopes, rate limits, problem+json errors."""

from hogsend.api.app import create_api as create_api

__all__ = ["create_api"]
