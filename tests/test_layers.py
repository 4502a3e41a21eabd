"""The layering docs/architecture.md promises, checked on the source: who may import what."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "mdpipe"


def imports_of(path: Path) -> set[str]:
    """Every module a file imports (absolute names; relative imports resolved)."""
    tree = ast.parse(path.read_text(), str(path))
    mod = ".".join(path.relative_to(PKG.parent).with_suffix("").parts)
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = mod.split(".")[: -node.level]
                base = ".".join([*parent, base] if base else parent)
            out.add(base)
    return out


def files(sub: str) -> list[Path]:
    return sorted((PKG / sub).rglob("*.py"))


def offending(paths: list[Path], banned: tuple[str, ...]) -> dict[str, list[str]]:
    bad = {}
    for p in paths:
        hits = sorted(m for m in imports_of(p) if m.startswith(banned))
        if hits:
            bad[str(p.relative_to(PKG.parent))] = hits
    return bad


@pytest.mark.parametrize(
    ("layer", "banned"),
    [
        # the core is pure: no storage, no pipeline, no Dagster, no live process, no file I/O libs
        (
            "core",
            (
                "dagster",
                "mdpipe.lake",
                "mdpipe.pipeline",
                "mdpipe.defs",
                "mdpipe.capture",
                "mdpipe.alerts",
                "mdpipe.venues",
                "pyarrow.parquet",
                "duckdb",
            ),
        ),
        # the pipeline layer is Dagster-free; capture, alerts, venues and the lake never need it
        ("pipeline", ("dagster", "mdpipe.defs")),
        ("capture", ("dagster", "mdpipe.defs", "mdpipe.pipeline")),
        ("alerts", ("dagster", "mdpipe.defs")),
        ("venues", ("dagster", "mdpipe.defs", "mdpipe.capture", "mdpipe.pipeline")),
        ("lake", ("dagster", "mdpipe.defs", "mdpipe.core", "mdpipe.capture", "mdpipe.venues")),
    ],
)
def test_layer_imports(layer: str, banned: tuple[str, ...]) -> None:
    assert offending(files(layer), banned) == {}


def test_core_does_no_file_io() -> None:
    calls = {"open", "read_parquet", "write_parquet", "scan_parquet", "read_text", "write_bytes"}
    found = []
    for p in files("core"):
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.Call):
                f = node.func
                name = f.id if isinstance(f, ast.Name) else getattr(f, "attr", "")
                if name in calls:
                    found.append(f"{p.relative_to(PKG.parent)}:{node.lineno} {name}")
    assert found == []


def test_the_checker_sees_imports() -> None:
    """The checks above would pass on a parser that finds nothing; this one cannot."""
    assert "dagster" in imports_of(PKG / "defs" / "assets.py")
    assert "mdpipe.core.kernel" in imports_of(PKG / "core" / "online.py")
