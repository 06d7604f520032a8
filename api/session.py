"""Browser sign-in: a token exchanged for an HttpOnly, SameSite=Strict session cookie.

Failed sign-ins are counted per client address in the database (so every API replica sees
them); from the 11th failure within a minute the address gets 429 until the minute passes.
"""

from __future__ import annotations

import secrets
from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, HTTPException, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from pydantic import Field

from api.auth import SESSION_COOKIE, ScopeDep, authenticate, principal_json, token_hash
from api.common import Problem, _Strict, forbid_unknown_query, responses
from api.db import PoolDep
from api.pages import TEMPLATES

MAX_FAILURES_PER_MINUTE = 10

router = APIRouter(tags=["session"], dependencies=[Depends(forbid_unknown_query)])


class SignIn(_Strict):
    token: str = Field(min_length=1, max_length=200)


class Me(_Strict):
    role: str
    name: str
    building: str | None
    tenant: str | None


def _address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


async def _sign_in(request: Request, pool: PoolDep, token: str) -> tuple[dict[str, Any], str]:
    """Check the token; return the principal and a new session secret, or raise 401/429."""
    address = _address(request)
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT api_sign_in_failures_recent(%s, false) AS n", (address,))
        row = await cur.fetchone()
        if row is not None and row["n"] >= MAX_FAILURES_PER_MINUTE:
            raise HTTPException(
                429, "too many failed sign-ins; wait a minute", headers={"Retry-After": "60"}
            )
        principal = await authenticate(conn, "token", token_hash(token))
        if principal is None:
            await conn.execute("SELECT api_sign_in_failures_recent(%s, true)", (address,))
            await conn.execute(
                "INSERT INTO audit_log (action, result, address) VALUES ('sign_in', 'refused', %s)",
                (address,),
            )
            await conn.commit()
            raise HTTPException(401, "unknown or revoked token")
        secret = secrets.token_urlsafe(32)
        hours = request.app.state.settings.api_session_hours
        await conn.execute(
            "SELECT api_session_open(%s, %s, %s)",
            (token_hash(secret), principal.token_id, timedelta(hours=hours)),
        )
        await conn.execute(
            "INSERT INTO audit_log (token_id, role, building_id, tenant_id, action, result,"
            " address) VALUES (%s, %s, %s, %s, 'sign_in', 'ok', %s)",
            (
                principal.token_id,
                principal.role,
                principal.building_id,
                principal.tenant_id,
                address,
            ),
        )
        await conn.commit()
    return principal_json(principal), secret


def _set_cookie(request: Request, response: Response, secret: str) -> None:
    settings = request.app.state.settings
    response.set_cookie(
        SESSION_COOKIE,
        secret,
        max_age=int(settings.api_session_hours * 3600),
        httponly=True,
        samesite="strict",
        secure=settings.api_secure_cookies,
        path="/",
    )


async def _sign_out(request: Request, pool: PoolDep, response: Response) -> None:
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie:
        async with pool.connection() as conn:
            await conn.execute("SELECT api_session_close(%s)", (token_hash(cookie),))
            await conn.commit()
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")


@router.post(
    "/api/v1/auth/session",
    response_model=Me,
    responses={**responses(400, 429), 401: {"model": Problem, "description": "bad token"}},
    summary="Sign in with a token: sets the session cookie",
)
async def sign_in(request: Request, pool: PoolDep, body: SignIn, response: Response) -> Me:
    who, secret = await _sign_in(request, pool, body.token)
    _set_cookie(request, response, secret)
    return Me(**who)


@router.delete(
    "/api/v1/auth/session", status_code=204, summary="Sign out: ends the session, clears the cookie"
)
async def sign_out(request: Request, pool: PoolDep, response: Response) -> None:
    await _sign_out(request, pool, response)


@router.get("/api/v1/auth/me", response_model=Me, responses=responses(), summary="Who am I")
async def me(s: ScopeDep) -> Me:
    return Me(**principal_json(s.principal))


@router.get("/sign-in", response_class=HTMLResponse, include_in_schema=False)
async def sign_in_page(request: Request) -> HTMLResponse:
    return TEMPLATES.TemplateResponse(request, "sign_in.html", {"error": None})


@router.post("/sign-in", include_in_schema=False, response_model=None)
async def sign_in_form(
    request: Request, pool: PoolDep, token: Annotated[str, Form(max_length=200)]
) -> Response:
    try:
        _, secret = await _sign_in(request, pool, token)
    except HTTPException as exc:
        return TEMPLATES.TemplateResponse(
            request, "sign_in.html", {"error": exc.detail}, status_code=exc.status_code
        )
    response = RedirectResponse("/", status_code=303)
    _set_cookie(request, response, secret)
    return response


@router.post("/sign-out", include_in_schema=False)
async def sign_out_form(request: Request, pool: PoolDep) -> RedirectResponse:
    response = RedirectResponse("/sign-in", status_code=303)
    await _sign_out(request, pool, response)
    return response
