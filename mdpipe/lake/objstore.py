"""Lakes on object storage: ``s3://bucket/prefix`` on any S3-compatible store.

Configuration is the standard AWS one, read from the environment when a lake is opened (never
at import): ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL`` (MinIO, R2, GCS interop, a local
server; unset means AWS itself), ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` /
``AWS_SESSION_TOKEN`` and ``AWS_REGION`` or ``AWS_DEFAULT_REGION``. The same values drive every
client the lake uses: s3fs (listing, PUTs, deletes, pyarrow and DuckDB reads through fsspec)
and polars' native reader (``storage_options``).

Paths of an object-store lake are :class:`upath.UPath` objects, which implement pathlib's API
over fsspec (``/``, ``name``, ``parent``, ``glob``, ``iterdir``, ``unlink``), so the lake's
listing and naming rules are the same code for both kinds of lake; only the places that need a
local file (atomic publish, Parquet readers) ask :func:`is_remote`.

Why no rename: S3 has none. An object appears whole with its one PUT (or a multipart upload's
completion), so the atomic publish of an object is "write a local temporary file, upload it
under its final name" (:func:`mdpipe.lake.atomic.atomic_target`), and readers, which list only
``*.parquet`` keys, never see a partial object.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

SUPPORTED_SCHEMES = ("s3",)
_ENDPOINT_VARS = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
_REGION_VARS = ("AWS_REGION", "AWS_DEFAULT_REGION")


@dataclass(frozen=True)
class S3Config:
    """Where and as whom to reach an S3-compatible store (from the AWS variables)."""

    endpoint_url: str | None = None
    key: str | None = None
    secret: str | None = None
    token: str | None = None
    region: str | None = None

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> S3Config:
        e = os.environ if env is None else env

        def first(names: tuple[str, ...]) -> str | None:
            return next((e[n] for n in names if e.get(n)), None)

        return cls(
            endpoint_url=first(_ENDPOINT_VARS),
            key=e.get("AWS_ACCESS_KEY_ID") or None,
            secret=e.get("AWS_SECRET_ACCESS_KEY") or None,
            token=e.get("AWS_SESSION_TOKEN") or None,
            region=first(_REGION_VARS),
        )

    def s3fs_options(self) -> dict[str, Any]:
        """Keyword arguments of :class:`s3fs.S3FileSystem`. The listings cache is off: a
        reader must see objects another process published a moment ago."""
        out: dict[str, Any] = {"use_listings_cache": False}
        if self.endpoint_url:
            out["endpoint_url"] = self.endpoint_url
        if self.key:
            out["key"] = self.key
        if self.secret:
            out["secret"] = self.secret
        if self.token:
            out["token"] = self.token
        if self.region:
            out["client_kwargs"] = {"region_name": self.region}
        return out

    def polars_options(self) -> dict[str, str]:
        """polars' ``storage_options`` (object_store's names)."""
        out: dict[str, str] = {}
        if self.endpoint_url:
            out["aws_endpoint_url"] = self.endpoint_url
            if self.endpoint_url.startswith("http://"):
                out["aws_allow_http"] = "true"  # a local server on loopback speaks plain HTTP
        if self.key:
            out["aws_access_key_id"] = self.key
        if self.secret:
            out["aws_secret_access_key"] = self.secret
        if self.token:
            out["aws_session_token"] = self.token
        if self.region:
            out["aws_region"] = self.region
        return out


def open_root(url: str, config: S3Config | None = None) -> Path:
    """The root of an ``s3://bucket/prefix`` lake as a path object.

    Typed as :class:`~pathlib.Path` because that is the API the lake's code uses and UPath
    implements it; code that needs a real local file asks :func:`is_remote` first.
    """
    from upath import UPath

    cfg = config or S3Config.from_env()
    return cast(Path, UPath(url.rstrip("/"), **cfg.s3fs_options()))


def is_remote(path: object) -> bool:
    """True for an object-store path (a UPath that is not a local ``pathlib.Path``)."""
    return not isinstance(path, str | Path) and hasattr(path, "fs")


def filesystem(path: Path) -> Any:
    """The fsspec filesystem of an object-store path."""
    return cast(Any, path).fs


def key(path: Path) -> str:
    """``bucket/prefix/...`` of an object-store path (fsspec's form, no scheme)."""
    return str(cast(Any, path).path)


def upload(local: Path, final: Path) -> None:
    """Make ``local``'s bytes the object ``final`` (one PUT, or one completed multipart
    upload for large files: the object appears whole or not at all)."""
    filesystem(final).put_file(str(local), key(final))


def find_with_mtimes(base: Path, suffix: str) -> list[tuple[Path, int]]:
    """Every object under ``base`` whose name ends with ``suffix``, with its modification time
    (ns; when its upload completed), from one listing: object stores keep no folder times."""
    fs = filesystem(base)
    prefix = key(base)
    try:
        found = fs.find(prefix, detail=True)
    except FileNotFoundError:
        return []
    out = []
    for name, info in found.items():
        if not name.endswith(suffix):
            continue
        modified = info.get("LastModified")
        ns = int(modified.timestamp() * 1_000_000_000) if modified is not None else 0
        out.append((base / name[len(prefix) :].lstrip("/"), ns))
    return out


def delete(paths: list[Path]) -> None:
    """Delete objects in one batched request per thousand keys."""
    if paths:
        filesystem(paths[0]).rm([key(p) for p in paths])


__all__ = [
    "SUPPORTED_SCHEMES",
    "S3Config",
    "delete",
    "filesystem",
    "find_with_mtimes",
    "is_remote",
    "key",
    "open_root",
    "upload",
]
