"""The same partition on a local-disk lake and on an s3:// lake (moto's S3 server on loopback),
in alternating rounds of one run; appends the medians and ratios to bench/RESULTS.md.

Per round and lake kind: `mdpipe import` of the bundled BTCUSDT recording (two files) into a
fresh lake, then every asset of 2024-08-08 x binance:BTC-USDT (features + signals, then labels,
cv_folds, evaluation, the way `mdpipe run` does it: `mdpipe.run.execute` on an ephemeral
Dagster instance). The S3 server is `moto_server` in its own process on 127.0.0.1, so its CPU
is not charged to the measured process's GIL. Target (issue 15): object store within 2x.

    .venv/bin/python bench/objstore.py [--rounds 3] [--no-append]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT / "data" / "binance-spot-2024-08-08"
FILES = [DATA / "btcusdt_20240808.gz", DATA / "btcusdt_20240809.gz"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_moto() -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    exe = Path(sys.executable).with_name("moto_server")
    proc = subprocess.Popen(
        [str(exe), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):  # wait for the server to answer (an upper bound, not a pace)
        try:
            urllib.request.urlopen(url + "/moto-api/", timeout=1).close()
            break
        except OSError:
            time.sleep(0.05)
    return proc, url


def one(lake_location: str) -> tuple[float, float]:
    import dagster as dg

    from mdpipe.ingest import import_paths
    from mdpipe.lake import Lake
    from mdpipe.run import execute, register_markets, select_parts

    lake = Lake(lake_location)
    t0 = time.perf_counter()
    report = import_paths(FILES, lake)
    t_import = time.perf_counter() - t0
    assert report.ok, report.errors
    parts = select_parts(lake, "binance:BTC-USDT", "2024-08-08")
    with dg.DagsterInstance.ephemeral() as instance:
        register_markets(instance, lake)
        t0 = time.perf_counter()
        out = execute(lake, parts, instance=instance)
        t_run = time.perf_counter() - t0
    assert out.ok, out
    return t_import, t_run


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-append", action="store_true")
    args = ap.parse_args()
    proc, endpoint = start_moto()
    os.environ.update(
        AWS_ENDPOINT_URL=endpoint,
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench-secret",
        AWS_DEFAULT_REGION="us-east-1",
    )
    import boto3

    s3 = boto3.client("s3", endpoint_url=endpoint)
    tmp = Path(tempfile.mkdtemp(prefix="mdpipe-objbench-"))
    res: dict[str, list[tuple[float, float]]] = {"local": [], "s3": []}
    try:
        one(str(tmp / "warm"))  # numba caches, imports: outside the timing
        for r in range(args.rounds):
            for kind in ("local", "s3") if r % 2 == 0 else ("s3", "local"):
                if kind == "local":
                    loc = str(tmp / f"lake-{r}")
                else:
                    bucket = f"bench-{uuid.uuid4().hex[:10]}"
                    s3.create_bucket(Bucket=bucket)
                    loc = f"s3://{bucket}/lake"
                res[kind].append(one(loc))
                print(kind, r, [round(x, 2) for x in res[kind][-1]], flush=True)
    finally:
        proc.terminate()
        proc.wait(30)
        shutil.rmtree(tmp, ignore_errors=True)
    med = {k: (statistics.median(x[0] for x in v), statistics.median(x[1] for x in v))
           for k, v in res.items()}  # fmt: skip
    lines = [
        "",
        f"## Object store vs local disk ({time.strftime('%Y-%m-%d')}, `bench/objstore.py "
        f"--rounds {args.rounds}`)",
        "",
        "2024-08-08 x binance:BTC-USDT: import of the two BTCUSDT recordings into a fresh lake, "
        "then every asset (`mdpipe.run.execute`); local disk vs `s3://` on `moto_server` "
        f"(own process, 127.0.0.1), alternating rounds, medians of {args.rounds}.",
        "",
        "| measurement | local s | s3 s | s3 / local |",
        "|---|---|---|---|",
        f"| import | {med['local'][0]:.2f} | {med['s3'][0]:.2f} | "
        f"{med['s3'][0] / med['local'][0]:.2f} |",
        f"| every asset of the partition | {med['local'][1]:.2f} | {med['s3'][1]:.2f} | "
        f"{med['s3'][1] / med['local'][1]:.2f} |",
        f"| both | {sum(med['local']):.2f} | {sum(med['s3']):.2f} | "
        f"{sum(med['s3']) / sum(med['local']):.2f} |",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if not args.no_append:
        with open(ROOT / "bench" / "RESULTS.md", "a") as f:
            f.write(text)


if __name__ == "__main__":
    main()
