"""Shared pieces of the routers: error models, documented responses, ids, JSON output."""

from __future__ import annotations

from typing import Any

from fastapi import HTTPException, Path, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class Problem(BaseModel):
    """Every error that is not a validation error."""

    model_config = ConfigDict(extra="forbid")
    detail: str


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the error codes a route can answer (401 and 422 always)."""
    text = {
        400: "the body is not JSON",
        401: "no credentials, or a token that is unknown or revoked",
        403: "the role may not do this",
        404: "no such object, or not yours to see",
        409: "the alert engine refused the action",
        429: "too many failed sign-ins from this address",
        503: "the database or the alert engine is not reachable",
        504: "the alert engine did not answer in time",
    }
    out: dict[int | str, dict[str, Any]] = {
        401: {"model": Problem, "description": text[401]},
    }
    for code in codes:
        out[code] = {"model": Problem, "description": text[code]}
    return out


def building_path() -> Any:
    return Path(pattern=ID_PATTERN, description="building id", examples=["ref-tower"])


def not_found(what: str) -> HTTPException:
    return HTTPException(404, f"{what} not found")


def bad_query(field: str, message: str) -> RequestValidationError:
    """A 422 in FastAPI's own shape, naming the query parameter."""
    return RequestValidationError(
        [{"type": "value_error", "loc": ("query", field), "msg": message, "input": None}]
    )


def json_response(model: BaseModel, status_code: int = 200) -> Response:
    """Serialise once (FastAPI would validate the model again)."""
    return Response(
        model.__pydantic_serializer__.to_json(model),
        status_code=status_code,
        media_type="application/json",
    )


async def forbid_unknown_query(request: Request) -> None:
    """Refuse query parameters the route does not declare (422, with the parameter's name)."""
    route = request.scope.get("route")
    dependant = getattr(route, "dependant", None)
    if dependant is None:
        return
    known: set[str] = set()
    stack = [dependant]
    while stack:
        dep = stack.pop()
        known.update(p.alias for p in dep.query_params)
        stack.extend(dep.dependencies)
    unknown = sorted(set(request.query_params) - known)
    if unknown:
        raise RequestValidationError(
            [
                {
                    "type": "extra_forbidden",
                    "loc": ("query", name),
                    "msg": "unknown query parameter",
                    "input": request.query_params.get(name),
                }
                for name in unknown
            ]
        )
