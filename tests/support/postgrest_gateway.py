"""TEST CODE: a minimal PostgREST-compatible RPC gateway, because no PostgREST binary can be
installed here. It serves only what chatbuffer's Supabase connector uses:

    POST /rest/v1/rpc/{function}   JSON object of named arguments -> JSON array of result rows

like PostgREST does it: the key in `apikey` (and the bearer) selects the database role the call
runs as (`service_role` or `anon`), arguments are typed by the function's own signature
(json_to_record, as PostgREST builds its query), results are json_agg of the rows, and errors
come back as {"code", "message", "details", "hint"} with PostgREST's status codes.
"""

from __future__ import annotations

import contextlib
from typing import AsyncIterator

import asyncpg
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

# SQLSTATE class or code -> HTTP status, after PostgREST's error table.
_STATUS = {"42501": 403, "42883": 404, "P0001": 400, "23505": 409, "23503": 409, "22": 400, "23": 400, "42": 400}


def _status(sqlstate: str) -> int:
    return _STATUS.get(sqlstate) or _STATUS.get(sqlstate[:2]) or 500


class PostgrestGateway:
    def __init__(self, dsn: str, keys: dict[str, str]) -> None:
        self._dsn = dsn
        self._keys = keys  # api key -> role
        self._pool: asyncpg.Pool | None = None
        self._signatures: dict[str, str] = {}
        self.calls: list[str] = []

    async def _signature(self, conn: asyncpg.Connection, function: str) -> str | None:
        """`"p_a" text, "p_b" bigint, ...`: the record type json_to_record reads arguments into."""
        if function not in self._signatures:
            rows = await conn.fetch(
                "select a.name, format_type(a.type, null) as type, p.proretset"
                "  from pg_proc p join pg_namespace n on n.oid = p.pronamespace,"
                "       unnest(p.proargnames[1:p.pronargs], p.proargtypes::oid[]) as a(name, type)"
                " where n.nspname = 'public' and p.proname = $1", function)
            exists = await conn.fetchval("select count(*) from pg_proc p join pg_namespace n on n.oid ="
                                         " p.pronamespace where n.nspname = 'public' and p.proname = $1", function)
            if not exists:
                return None
            self._signatures[function] = ", ".join(f'"{r["name"]}" {r["type"]}' for r in rows)
        return self._signatures[function]

    async def rpc(self, request: Request) -> Response:
        key = request.headers.get("apikey")
        role = self._keys.get(key or "")
        if role is None or request.headers.get("authorization") != f"Bearer {key}":
            return JSONResponse({"code": "PGRST301", "message": "Invalid API key", "details": None, "hint": None},
                                status_code=401)
        function = request.path_params["function"]
        args = await request.body() or b"{}"
        self._pool = self._pool or await asyncpg.create_pool(self._dsn, min_size=1, max_size=4)
        async with self._pool.acquire() as conn:
            signature = await self._signature(conn, function)
            if signature is None:
                return JSONResponse({"code": "PGRST202", "message": f"Could not find the function public.{function}",
                                     "details": None, "hint": None}, status_code=404)
            named = ", ".join(f"{part.split()[0]} := a.{part.split()[0]}" for part in signature.split(", ") if part)
            record = f"json_to_record($1::json) as a({signature})" if signature else "(select) as a"
            query = (f"select coalesce(json_agg(r), '[]')::text from {record},"
                     f" lateral public.{function}({named}) r")
            self.calls.append(function)
            try:
                async with conn.transaction():
                    await conn.execute(f"set local role {role}")
                    result = await conn.fetchval(query, args.decode()) if signature else await conn.fetchval(query)
            except asyncpg.PostgresError as exc:
                return JSONResponse({"code": exc.sqlstate, "message": str(exc),
                                     "details": getattr(exc, "detail", None), "hint": getattr(exc, "hint", None)},
                                    status_code=_status(exc.sqlstate or ""))
        return Response(result, media_type="application/json")

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()

    def app(self) -> Starlette:
        @contextlib.asynccontextmanager
        async def lifespan(app: Starlette) -> AsyncIterator[None]:
            yield
            await self.close()

        return Starlette(routes=[Route("/rest/v1/rpc/{function}", self.rpc, methods=["POST"])], lifespan=lifespan)
