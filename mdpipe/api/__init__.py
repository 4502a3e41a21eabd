"""`mdpipe serve`: the signals API (FastAPI on uvicorn).

    GET  /api/v1/signals            newest first; market, signal_type, since, until, source,
                                    limit, cursor
    GET  /api/v1/signals/{id}       one signal
    POST /api/v1/signals            Bearer token, Idempotency-Key; 201 with the stored signal_id
    GET  /api/v1/signals/stream     server-sent events of new live and posted signals
    GET  /health  /metrics  /docs

Parts: `config` (the `[api]` settings), `models` (request and response bodies), `auth` (tokens
compared in constant time, a fingerprint for keys and logs), `idempotency` (SQLite store of
Idempotency-Key answers), `signals` (reading and writing signals through `mdpipe.lake`),
`stream` (the lake watcher feeding SSE clients), `app` (`create_app(settings, lake)`), `cli`.
This package never imports dagster; fastapi is imported by `app` only.
"""
