"""`create_app(settings, lake)`: the signals API as a FastAPI application.

Order of checks on a post, each answered before the next is looked at, so a request is never
half-processed: body size (413) -> token (401) -> per-token rate limit (429 with Retry-After)
-> JSON and fields (422, naming the field) -> Idempotency-Key (replay, 409, 422) -> store
through `mdpipe.lake` (atomic) -> 201. Only the last step writes, so a rejected request leaves
the lake and the idempotency store as they were. The body is read and validated here rather
than by FastAPI's body parameter, because FastAPI parses JSON before any dependency runs, which
would answer a malformed body 422 before checking the token.

Tokens never reach a log: uvicorn's access log has no headers, errors name the token's problem
("invalid token"), never the token, and the rate limiter and idempotency store key on its
fingerprint (`auth.fingerprint`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import math
import os
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any

import pydantic
from fastapi import FastAPI, Query, Request
from fastapi.responses import JSONResponse, Response
from fastapi.sse import EventSourceResponse, ServerSentEvent
from limits import parse as parse_rate
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from mdpipe.api import signals as store
from mdpipe.api.auth import TokenCheck, tokens_from_env
from mdpipe.api.config import ApiConfig
from mdpipe.api.idempotency import DEFAULT_NAME as IDEMPOTENCY_FILE
from mdpipe.api.idempotency import IdempotencyStore
from mdpipe.api.models import Problem, SignalCreated, SignalIn, SignalPage
from mdpipe.api.stream import SignalWatcher
from mdpipe.lake import Lake

if TYPE_CHECKING:
    from mdpipe.alerts.fastpath import FastPath
    from mdpipe.settings import Settings

log = logging.getLogger("mdpipe.api")
IDEMPOTENCY_KEY_MAX = 255
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class ApiMetrics:
    """`mdpipe serve`'s /metrics. Alert delivery counts come from the ledger, exported by the
    capture process (mdpipe.alerts.metrics); exporting them here too would count them twice."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "mdpipe_api_requests", "API requests answered", ["method", "route", "status"],
            registry=r,
        )  # fmt: skip
        self.seconds = Histogram(
            "mdpipe_api_request_seconds", "Time to answer an API request", ["method", "route"],
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.posted = Counter(
            "mdpipe_api_signals_posted", "Signals stored from posts", ["signal_type"], registry=r
        )
        self.rejected = Counter(
            "mdpipe_api_posts_rejected", "Posts refused, by status", ["status"], registry=r
        )
        self.stream_clients = Gauge(
            "mdpipe_api_stream_clients", "Open /api/v1/signals/stream connections", registry=r
        )
        self.up = Gauge("mdpipe_api_up", "1 while the API serves", registry=r)
        self.up.set(1)
        self.fast_path = r  # the fast path registers its metrics here


def _problem(status: int, detail: str, field: str | None = None, **kw: Any) -> JSONResponse:
    body = Problem(detail=detail, field=field, errors=kw.pop("errors", None)).model_dump(
        exclude_none=True
    )
    return JSONResponse(body, status_code=status, headers=kw.pop("headers", None))


def _field_of(err: Mapping[str, Any]) -> str | None:
    loc = [str(x) for x in err.get("loc", ())]
    return ".".join(loc) if loc else None


def _validation_problem(e: pydantic.ValidationError) -> JSONResponse:
    errs = e.errors(include_url=False, include_input=False)
    parts = []
    for err in errs:
        field = _field_of(err)
        if err.get("type") == "json_invalid":
            parts.append(f"malformed JSON: {err.get('msg')}")
        else:
            parts.append(f"{field or 'body'}: {err.get('msg')}")
    clean = [{"field": _field_of(x), "message": x.get("msg"), "type": x.get("type")} for x in errs]
    first = clean[0]["field"] if clean else None
    return _problem(422, "; ".join(parts), first, errors=clean)


def _parse_time(name: str, text: str | None) -> int | None:
    """Epoch seconds, or an ISO 8601 time (UTC unless it says otherwise) -> ns."""
    if text is None:
        return None
    try:
        v = float(text)
        if not math.isfinite(v):
            raise ValueError
        return round(v * 1e6) * 1000
    except ValueError:
        pass
    import datetime as dt

    try:
        d = dt.datetime.fromisoformat(text)
    except ValueError:
        raise store.QueryError(
            name, f"expected epoch seconds or an ISO 8601 time, got {text!r}"
        ) from None
    if d.tzinfo is None:
        d = d.replace(tzinfo=dt.UTC)
    return round(d.timestamp() * 1e6) * 1000


def create_app(
    settings: Settings,
    lake: Lake,
    *,
    environ: Mapping[str, str] | None = None,
    fast_path: FastPath | None = None,
) -> FastAPI:
    """The API over `lake`, configured by `settings.api` (and `settings.alerts` for the fast
    path when `fast_path` is not given: None here means "build it from the environment")."""
    env = os.environ if environ is None else environ
    cfg: ApiConfig = settings.api
    tokens = TokenCheck(tokens_from_env(env))
    metrics = ApiMetrics()
    limiter = MovingWindowRateLimiter(MemoryStorage())
    rate = parse_rate(cfg.rate_limit)
    idem = IdempotencyStore(lake.root / IDEMPOTENCY_FILE, ttl_s=cfg.idempotency_ttl_s)
    watcher = SignalWatcher(lake.root, cfg.stream_poll_s)
    files = store.FileCache()
    state: dict[str, Any] = {"fast_path": fast_path}

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if state["fast_path"] is None:
            from mdpipe.alerts.fastpath import FastPath

            state["fast_path"] = FastPath.from_settings(
                lake.root, settings.alerts, environ=env, name="serve", registry=metrics.registry
            )
        watcher.start()
        try:
            yield
        finally:
            await watcher.stop()
            fp = state["fast_path"]
            if fp is not None and fast_path is None:
                await asyncio.to_thread(fp.stop, 10.0)

    app = FastAPI(
        title="mdpipe signals API",
        version="1",
        description="Read, post and stream mdpipe signals (live, batch and posted).",
        lifespan=lifespan,
    )
    app.state.metrics = metrics
    app.state.lake = lake
    app.state.idempotency = idem
    app.state.watcher = watcher
    app.state.fast_path = lambda: state["fast_path"]

    @app.middleware("http")
    async def count(request: Request, call_next: Any) -> Response:
        t0 = time.perf_counter()
        try:
            response: Response = await call_next(request)
        except Exception:
            log.exception("%s %s failed", request.method, request.url.path)
            response = _problem(500, "internal error (logged on the server)")
        route = request.scope.get("route")
        path = getattr(route, "path", None) or "unmatched"
        metrics.requests.labels(request.method, path, str(response.status_code)).inc()
        if path != "/api/v1/signals/stream":
            took = time.perf_counter() - t0
            metrics.seconds.labels(request.method, path).observe(took)
            # the server's share of a request's time, for clients and benchmarks (W3C)
            response.headers["Server-Timing"] = f"app;dur={took * 1000:.2f}"
        return response

    async def read_limited(request: Request) -> bytes | None:
        """The body, or None when it is over `body_limit_bytes` (declared or streamed)."""
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > cfg.body_limit_bytes:
            return None
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > cfg.body_limit_bytes:
                return None
            chunks.append(chunk)
        return b"".join(chunks)

    # ---- reading ---------------------------------------------------------------------------
    @app.get(
        "/api/v1/signals",
        response_model=SignalPage,
        responses={422: {"model": Problem}},
        summary="Signals, newest first",
    )
    def list_signals(
        market: str | None = Query(None, description="venue:SYMBOL (binance:BTC/USDT) or SYMBOL"),
        signal_type: str | None = Query(None),
        since: str | None = Query(None, description="epoch seconds or ISO 8601, inclusive"),
        until: str | None = Query(None, description="epoch seconds or ISO 8601, exclusive"),
        source: str | None = Query(None, description="live, batch or api"),
        limit: int = Query(100, ge=1, description="rows per page (at most [api] page_max)"),
        cursor: str | None = Query(None, description="next_cursor of the previous page"),
    ) -> Any:
        try:
            if limit > cfg.page_max:
                raise store.QueryError("limit", f"at most {cfg.page_max}, got {limit}")
            venue, symbol = store.parse_market(market) if market else (None, None)
            q = store.SignalQuery(
                venue=venue,
                symbol=symbol,
                signal_type=signal_type,
                since_ns=_parse_time("since", since),
                until_ns=_parse_time("until", until),
                source=source,
                limit=limit,
                after=store.decode_cursor(cursor) if cursor else None,
            )
            page, nxt = store.query_page(lake, q, files)
        except store.QueryError as e:
            return _problem(422, str(e), e.field)
        # serialised by polars: validating and encoding 1,000 free-form rows through the
        # response model would cost more than the query (the model still documents the shape)
        return Response(store.page_json(page, nxt), media_type="application/json")

    @app.get("/api/v1/signals/stream", response_class=EventSourceResponse)
    async def stream(
        request: Request,
        market: str | None = Query(None),
        signal_type: str | None = Query(None),
        source: str | None = Query(None, description="live or api"),
    ) -> AsyncIterator[ServerSentEvent]:
        venue, symbol = store.parse_market(market) if market else (None, None)
        q = watcher.subscribe()
        metrics.stream_clients.inc()
        try:
            yield ServerSentEvent(comment="subscribed", retry=1000)
            while True:
                try:
                    row = await asyncio.wait_for(q.get(), timeout=15.0)
                except TimeoutError:
                    if await request.is_disconnected():
                        return
                    yield ServerSentEvent(comment="keep-alive")
                    continue
                if (
                    (venue and row.get("venue") != venue)
                    or (symbol and row.get("symbol") != symbol)
                    or (signal_type and row.get("signal_type") != signal_type)
                    or (source and row.get("source") != source)
                ):
                    continue
                yield ServerSentEvent(data=row, event="signal", id=str(row.get("signal_id")))
        finally:
            watcher.unsubscribe(q)
            metrics.stream_clients.dec()

    @app.get(
        "/api/v1/signals/{signal_id}",
        responses={404: {"model": Problem}},
        summary="One signal by id",
    )
    def get_signal(signal_id: str) -> Any:
        if not (0 < len(signal_id) <= 64 and signal_id.isalnum()):
            return _problem(422, f"signal_id: expected up to 64 letters and digits, got {signal_id!r}",
                            "signal_id")  # fmt: skip
        row = store.find_signal(lake, signal_id)
        if row is None:
            return _problem(404, f"no signal {signal_id}", "signal_id")
        return row

    # ---- posting ---------------------------------------------------------------------------
    @app.post(
        "/api/v1/signals",
        status_code=201,
        response_model=SignalCreated,
        summary="Post a signal (Bearer token; Idempotency-Key honoured)",
        responses={
            401: {"model": Problem},
            409: {"model": Problem},
            413: {"model": Problem},
            422: {"model": Problem},
            429: {"model": Problem},
        },
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": SignalIn.model_json_schema()}},
            },
            "parameters": [
                {
                    "name": "Idempotency-Key",
                    "in": "header",
                    "required": False,
                    "schema": {"type": "string", "maxLength": IDEMPOTENCY_KEY_MAX},
                    "description": "repeat a post safely: the same key and body answer the "
                    "first response again without storing anything new",
                }
            ],
        },
    )
    async def post_signal(request: Request) -> Response:
        body = await read_limited(request)
        if body is None:
            metrics.rejected.labels("413").inc()
            return _problem(
                413, f"request body over the limit of {cfg.body_limit_bytes} bytes", "body"
            )
        fp, why = tokens.check(request.headers.get("authorization"))
        if fp is None:
            metrics.rejected.labels("401").inc()
            return _problem(401, why, "Authorization", headers={"WWW-Authenticate": "Bearer"})
        if not limiter.hit(rate, fp):
            reset, _ = limiter.get_window_stats(rate, fp)
            wait = max(1, math.ceil(reset - time.time()))
            metrics.rejected.labels("429").inc()
            return _problem(
                429,
                f"rate limit of {cfg.rate_limit} per token reached; retry in {wait} s",
                headers={"Retry-After": str(wait)},
            )
        try:
            sig = SignalIn.model_validate_json(
                body, context={"now": time.time(), "max_clock_skew_s": cfg.max_clock_skew_s}
            )
        except pydantic.ValidationError as e:
            metrics.rejected.labels("422").inc()
            return _validation_problem(e)
        key = request.headers.get("idempotency-key")
        if key is not None and not (0 < len(key) <= IDEMPOTENCY_KEY_MAX and key.isprintable()):
            metrics.rejected.labels("422").inc()
            return _problem(
                422, f"Idempotency-Key: 1 to {IDEMPOTENCY_KEY_MAX} printable characters",
                "Idempotency-Key",
            )  # fmt: skip
        if key is not None:
            canon = json.dumps(sig.model_dump(), sort_keys=True).encode()
            begun = idem.begin(fp, key, hashlib.sha256(canon).hexdigest())
            if begun.outcome == "replay":
                return Response(
                    begun.response, status_code=begun.status or 201,
                    media_type="application/json", headers={"Idempotent-Replayed": "true"},
                )  # fmt: skip
            if begun.outcome == "conflict":
                metrics.rejected.labels("422").inc()
                return _problem(
                    422, "Idempotency-Key was already used with a different body",
                    "Idempotency-Key",
                )  # fmt: skip
            if begun.outcome == "in_progress":
                metrics.rejected.labels("409").inc()
                return _problem(
                    409, "a request with this Idempotency-Key is still being processed",
                    "Idempotency-Key",
                )  # fmt: skip
        recv = time.time_ns()
        sid = store.api_signal_id(fp, key)
        venue = sig.venue or cfg.default_venue
        row = store.posted_row(
            signal_id=sid, venue=venue, symbol=sig.symbol, ts_ns=sig.ts_ns(),
            signal_type=sig.signal_type, direction=sig.direction_or_sign(), score=sig.score,
            price=sig.price, details=sig.details, recv_ts_ns=recv,
        )  # fmt: skip
        try:
            await asyncio.to_thread(store.store_posted, lake, row)
        except BaseException:
            if key is not None:
                idem.abort(fp, key)
            raise
        out = SignalCreated(signal_id=sid, venue=venue, symbol=sig.symbol, ts_ns=sig.ts_ns())
        text = out.model_dump_json()
        if key is not None:
            idem.finish(fp, key, 201, text)
        metrics.posted.labels(sig.signal_type).inc()
        fpath = state["fast_path"]
        if fpath is not None:
            fpath.submit_frame(row)
        log.info("posted %s %s %s score %.3f (token %s)", sid, sig.symbol, sig.signal_type,
                 sig.score, fp)  # fmt: skip
        return Response(
            text, status_code=201, media_type="application/json",
            headers={"Location": f"/api/v1/signals/{sid}"},
        )  # fmt: skip

    # ---- operations ------------------------------------------------------------------------
    @app.get("/health", summary="Lake reachable, newest live signal's age, capture health")
    def health() -> JSONResponse:
        now = time.time_ns()
        body: dict[str, Any] = {"lake": {"root": str(lake.root)}}
        ok = lake.root.is_dir() and os.access(lake.root, os.R_OK | os.W_OK)
        body["lake"]["reachable"] = ok
        newest = store.newest_live(lake, files) if ok else None
        body["newest_live_signal"] = (
            None
            if newest is None
            else {
                "signal_id": newest["signal_id"],
                "ts_ns": newest["ts_ns"],
                "age_s": round((now - int(newest["ts_ns"])) / 1e9, 3),
            }
        )
        if cfg.capture_health_url:
            try:
                with urllib.request.urlopen(cfg.capture_health_url, timeout=2.0) as r:
                    body["capture"] = {"healthy": True, "status": r.status}
            except urllib.error.HTTPError as e:
                body["capture"] = {"healthy": False, "status": e.code}
                ok = False
            except OSError as e:
                body["capture"] = {"healthy": False, "error": str(e)}
                ok = False
        body["status"] = "ok" if ok else "degraded"
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/metrics", summary="Prometheus metrics", include_in_schema=True)
    def prom() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


__all__ = ["ApiMetrics", "create_app"]
