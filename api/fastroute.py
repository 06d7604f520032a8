"""A leaner request path for the read routes: the same contract, a fraction of the cost.

FastAPI re-derives every parameter's shape on every request (is its annotation a sequence, a
model, which aliases apply, ...) and walks the dependency tree generically: for a tenant's
power (five query parameters, a path parameter, the caller and the pool) that was 0.38 ms of
the API's CPU per request on a 2-core VM where the whole request cost 2.5 ms; and the API
process's CPU is what the benchmark's latency waits on (docs/api.md, "Results").

:class:`FastRoute` works out, once, when the route is built, what FastAPI does for a route of
the shape the read endpoints have, and per request does only that:

* the dependencies are among :data:`_KNOWN` (refuse unknown query parameters, the caller, the
  pool) and run in FastAPI's order: for these routes the unknown-parameter check (422), then
  the caller (401), then the parameters (422), as before;
* path and query parameters are single values (no lists, models, JSON or alias choices), read
  as FastAPI reads them (the last of a repeated query parameter) and validated by FastAPI's
  own field (``ModelField.validate``), so values and error entries (type, ``loc`` such as
  ``("query", "from")``, message, input, context) are FastAPI's;
* the endpoint is a coroutine annotated to return a ``Response``, returned as it is.

A route of another shape takes FastAPI's path, and so does every request while the app has
dependency overrides, and every route when this FastAPI's internals are not what the plan
reads. What the fast path leaves out: FastAPI's own telemetry hooks and the context of a
validation error's log line (the 422 body is the same); tracing that wraps FastAPI's
handlers sees these routes' endpoints only. ``tests/test_api_fastroute.py`` sends the same
good and bad requests to the fast routes both ways and compares status, headers and body.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Coroutine
from contextvars import ContextVar
from copy import deepcopy
from dataclasses import dataclass
from typing import Any

import fastapi.routing
from fastapi import Request, Response
from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError
from fastapi.params import Path, Query
from fastapi.routing import APIRoute
from pydantic import BaseModel, Json

from api.auth import current_principal
from api.common import forbid_unknown_query
from api.db import get_pool

_is_sequence: Callable[[Any], bool] | None
try:
    from fastapi._compat import field_annotation_is_sequence as _is_sequence
except ImportError:  # another FastAPI: then every route takes FastAPI's path
    _is_sequence = None

Handler = Callable[[Request], Coroutine[Any, Any, Response]]

#: False: every request takes FastAPI's path (the equivalence test's reference).
ENABLED = True

#: The dependencies the fast path runs itself (a route with any other: FastAPI's path).
_KNOWN = (forbid_unknown_query, current_principal, get_pool)


@dataclass(frozen=True, slots=True)
class _Param:
    name: str  # the endpoint's argument
    loc: tuple[str, str]  # ("path" | "query", the name in the URL)
    field: Any  # FastAPI's ModelField
    required: bool
    default: Any
    validate_default: bool

    def solve(self, given: str | None, values: dict[str, Any], errors: list[Any]) -> None:
        """FastAPI's ``_validate_value_with_model_field`` for this parameter."""
        if given is None:
            if self.required:
                errors.append(
                    {"type": "missing", "loc": self.loc, "msg": "Field required", "input": None}
                )
                return
            if not self.validate_default:
                values[self.name] = deepcopy(self.default)
                return
        value, errs = self.field.validate(
            deepcopy(self.default) if given is None else given, values, loc=self.loc
        )
        if errs:
            errors.extend(errs)
        else:
            values[self.name] = value


@dataclass(frozen=True, slots=True)
class _Plan:
    dependencies: tuple[tuple[Callable[..., Any], str | None], ...]  # (call, argument name)
    path: tuple[_Param, ...]
    query: tuple[_Param, ...]
    request_name: str | None
    endpoint: Callable[..., Coroutine[Any, Any, Response]]


def _param(field: Any, kind: type[Any]) -> _Param | None:
    info = field.field_info
    if not isinstance(info, kind) or info.validation_alias not in (None, field.alias):
        return None
    if getattr(field, "config", None):
        return None
    if any(type(m) is Json for m in info.metadata) or _has_model(info.annotation):
        return None
    if _is_sequence is None or _is_sequence(info.annotation) or info.default_factory is not None:
        return None
    loc = ("path" if kind is Path else "query", field.alias)
    required = info.is_required()
    if not required and info.default is not None:  # skipping its validation must not matter
        value, errs = field.validate(info.default, {}, loc=loc)
        if errs or value != info.default or type(value) is not type(info.default):
            return None
    return _Param(
        name=field.name,
        loc=loc,
        field=field,
        required=required,
        default=info.default,
        validate_default=bool(info.validate_default),
    )


def _has_model(annotation: Any) -> bool:
    args = getattr(annotation, "__args__", None) or (annotation,)
    return any(isinstance(a, type) and issubclass(a, BaseModel) for a in args)


def _known_tree(d: Dependant) -> bool:
    """Only dependencies of :data:`_KNOWN`, without parameters of their own."""
    if d.call not in _KNOWN or d.path_params or d.query_params or d.header_params:
        return False
    if d.cookie_params or d.body_params:
        return False
    return all(_known_tree(sub) for sub in d.dependencies)


def plan_of(route: APIRoute) -> _Plan | None:
    """What FastAPI does for ``route``, when the route has the shape this path handles (None
    also when this FastAPI's objects are not what the plan reads: its own path is right)."""
    try:
        return _plan(route)
    except (AttributeError, TypeError, ValueError):
        return None


def _plan(route: APIRoute) -> _Plan | None:
    d = _effective_dependant(route)
    if d is None:
        return None
    if not inspect.iscoroutinefunction(route.endpoint):
        return None
    if inspect.signature(route.endpoint).return_annotation not in ("Response", Response):
        return None
    special = (d.websocket_param_name, d.http_connection_param_name, d.response_param_name,
               d.background_tasks_param_name, d.security_scopes_param_name)  # fmt: skip
    if d.header_params or d.cookie_params or d.body_params or any(special):
        return None
    if not all(_known_tree(sub) for sub in d.dependencies):
        return None
    if list(inspect.signature(current_principal).parameters) != ["request", "pool"]:
        return None  # _serve calls it so
    path = [_param(f, Path) for f in d.path_params]
    query = [_param(f, Query) for f in d.query_params]
    if None in path or None in query:
        return None
    return _Plan(
        dependencies=tuple((sub.call, sub.name) for sub in d.dependencies if sub.call),
        path=tuple(p for p in path if p is not None),
        query=tuple(p for p in query if p is not None),
        request_name=d.request_param_name,
        endpoint=route.endpoint,
    )


#: How this FastAPI serves included routes: since 0.16x by an "effective context" (the
#: include's prefix and dependencies added to the route's own), set in a context variable
#: while the handler is built; before, by a copy of the route with those dependencies.
_CONTEXT_VAR: ContextVar[Any] | None = getattr(
    fastapi.routing, "_effective_route_context_var", None
)
_INCLUDES_BY_CONTEXT = hasattr(fastapi.routing, "_IncludedRouter")


def _effective_dependant(route: APIRoute) -> Dependant | None:
    """The dependant FastAPI serves ``route`` with, if it adds no dependency to the route's
    own; else None (FastAPI's path). A FastAPI that includes routes by context but whose
    context this cannot see gets None too: the include's dependencies (an app-wide check,
    say) must never be skipped."""
    if _CONTEXT_VAR is None:
        return None if _INCLUDES_BY_CONTEXT else route.dependant
    context = _CONTEXT_VAR.get()
    if context is None or getattr(context, "original_route", None) is not route:
        return route.dependant
    d = getattr(context, "dependant", None)
    if not isinstance(d, Dependant):
        return None
    ours = [(sub.call, sub.name) for sub in route.dependant.dependencies]
    if [(sub.call, sub.name) for sub in d.dependencies] != ours:
        return None
    return d


class FastRoute(APIRoute):
    """An ``APIRoute`` that serves requests by its plan (:func:`plan_of`) when it has one."""

    def get_route_handler(self) -> Handler:
        slow = super().get_route_handler()
        plan = plan_of(self)
        if plan is None:
            return slow

        async def app(request: Request) -> Response:
            if not ENABLED or getattr(request.app, "dependency_overrides", None):
                return await slow(request)
            return await _serve(plan, request)

        return app


async def _serve(plan: _Plan, request: Request) -> Response:
    values: dict[str, Any] = {}
    solved: dict[Callable[..., Any], Any] = {}  # FastAPI's per-request dependency cache
    for call, name in plan.dependencies:
        if call not in solved:
            if call is current_principal:  # it takes the pool, solved once as FastAPI does
                if get_pool not in solved:
                    solved[get_pool] = await get_pool(request)
                solved[call] = await current_principal(request=request, pool=solved[get_pool])
            else:  # the unknown-parameter check, the pool: the request only
                solved[call] = await call(request)
        if name is not None:
            values[name] = solved[call]
    errors: list[Any] = []
    for p in plan.path:
        p.solve(request.path_params.get(p.loc[1]), values, errors)
    query = request.query_params
    for p in plan.query:
        p.solve(query.get(p.loc[1]), values, errors)
    if errors:
        raise RequestValidationError(errors)
    if plan.request_name is not None:
        values[plan.request_name] = request
    return await plan.endpoint(**values)
