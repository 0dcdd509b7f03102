"""The REST API's timeline endpoint: latency for random persons and requests/s with concurrent clients.

    .venv/bin/python bench/api_latency.py --source var/lakehouse --sizes 100000 1000000

A region of a million persons takes hours to generate and refine on two cores, so each size's gold is made
from a built region (`--source`, e.g. the demo's) by copying its persons under new keys until there are
`size` of them: gold.patient_timeline laid out exactly as `lakehouse build` lays it out (person_key ranges of
gold.timeline_rows_per_file rows, sorted by person and time) and gold.patient_summary. What the API reads per
request (one file's pages of one person) is then what it reads on a region of that size. Replicated golds are
kept under --out and reused.

For each size the API runs as `lakehouse serve-api` on 127.0.0.1 and is measured from this process:
  health_p50_ms                       GET /health: the request path without a table read (the baseline)
  timeline_p50_ms, timeline_p95_ms    GET /persons/{key}/timeline for random persons, one client
  timeline_over_health_p50            the two medians' ratio
  rps_4_clients                       timeline requests/s with 4 concurrent clients (each loop bounded by
                                      --requests and --seconds)
Results: bench/results/<date>-api.json.
"""

from __future__ import annotations

import json
import math
import os
import random
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
from _common import PROJECT, session, write_results
from _common import parser as bench_parser
from pyspark.sql import functions as F

from lakehouse import access, io
from lakehouse.catalog import PATIENT_SUMMARY, TIMELINE
from lakehouse.gold.timeline import file_count, laid_out

TARGET_P95_MS = 300


def replicate(spark, settings, source: str, root: str, persons: int) -> dict:
    """gold.patient_timeline and gold.patient_summary under `root` with `persons` persons copied from `source`."""
    marker = Path(root) / "replicated.json"
    if marker.exists() and json.loads(marker.read_text())["persons"] == persons:
        return json.loads(marker.read_text())
    summary = spark.read.format("delta").load(PATIENT_SUMMARY.path(source))
    have = summary.count()
    copies = math.ceil(persons / have)
    copy = spark.range(copies).withColumnRenamed("id", "copy")

    def renamed(df):
        key = F.sha2(F.concat_ws(":", "person_key", F.col("copy").cast("string")), 256)
        return df.crossJoin(copy).withColumn("person_key", key).drop("copy")

    started = time.perf_counter()
    people = renamed(summary).orderBy(F.rand(1)).limit(persons).select("person_key").cache()
    kept = renamed(summary).join(people, "person_key", "left_semi")
    io.overwrite(spark, kept.orderBy("person_key"), PATIENT_SUMMARY, root)
    events = renamed(spark.read.format("delta").load(TIMELINE.path(source))).join(people, "person_key", "left_semi")
    rows = events.count()
    written = io.overwrite(spark, laid_out(events, file_count(rows, settings.main.gold.timeline_rows_per_file)),
                           TIMELINE, root)
    people.unpersist()
    found = {"persons": persons, "source_persons": have, "timeline_rows": written.rows,
             "timeline_files": spark.sql(f"DESCRIBE DETAIL delta.`{TIMELINE.path(root)}`").first().numFiles,
             "replicate_s": round(time.perf_counter() - started, 1)}
    marker.write_text(json.dumps(found))
    return found


def serve(settings, root: str, port: int, tokens: Path) -> tuple[subprocess.Popen, str]:
    """`lakehouse serve-api --foreground` on `root`, and a researcher token for it."""
    os.environ[access.TOKENS_ENV] = str(tokens)  # this process issues the token, the server inherits the file
    token, _ = access.add_token(settings, "bench", "researcher")
    process = subprocess.Popen([sys.executable, "-m", "lakehouse.cli", "serve-api", "--foreground", "--root", root,
                                "--port", str(port)], cwd=PROJECT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    for _ in range(120):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return process, token
        except httpx.HTTPError:
            time.sleep(0.5)
    process.terminate()
    raise RuntimeError("the API did not start")


def timed(client: httpx.Client, url: str) -> float:
    started = time.perf_counter()
    response = client.get(url)
    response.raise_for_status()
    return (time.perf_counter() - started) * 1000


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(share * len(ordered)))], 1)


def measure(base: str, token: str, people: list[str], requests: int, seconds: float, clients: int) -> dict:
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(headers=headers, timeout=30) as client:
        for person in people[:5]:  # warm: open the tables once
            timed(client, f"{base}/persons/{person}/timeline")
        health = [timed(client, f"{base}/health") for _ in range(50)]
        latencies, deadline = [], time.monotonic() + seconds
        for person in people[:requests]:
            if time.monotonic() > deadline:
                break
            latencies.append(timed(client, f"{base}/persons/{person}/timeline"))
    done, lock = [], threading.Lock()

    def loop(offset: int) -> None:
        stop_at = time.monotonic() + seconds
        with httpx.Client(headers=headers, timeout=30) as own:
            for person in people[offset::clients][: requests // clients]:
                if time.monotonic() > stop_at:
                    break
                timed(own, f"{base}/persons/{person}/timeline")
                with lock:
                    done.append(1)

    started = time.perf_counter()
    threads = [threading.Thread(target=loop, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    return {"health_p50_ms": round(statistics.median(health), 1), "timeline_requests": len(latencies),
            "timeline_p50_ms": percentile(latencies, 0.5), "timeline_p95_ms": percentile(latencies, 0.95),
            "timeline_over_health_p50": round(statistics.median(latencies) / statistics.median(health), 1),
            f"rps_{clients}_clients": round(len(done) / elapsed, 1), "concurrent_requests": len(done),
            "target_p95_met": percentile(latencies, 0.95) <= TARGET_P95_MS}


def main() -> None:
    parsed = bench_parser(__doc__, "var/bench/api", [100_000, 1_000_000])
    parsed.add_argument("--source", default="var/lakehouse", help="a built region's root (default: the demo's)")
    parsed.add_argument("--requests", type=int, default=400, help="timeline requests per measurement (bound)")
    parsed.add_argument("--seconds", type=float, default=60, help="time bound of each request loop")
    parsed.add_argument("--clients", type=int, default=4)
    parsed.add_argument("--port", type=int, default=8799)
    args = parsed.parse_args()
    out, settings, spark = session(args)
    source = str((PROJECT / args.source).resolve())
    results = []
    for size in args.sizes:
        root = str(out / f"root-{size}")
        made = replicate(spark, settings, source, root, size)
        sample = (spark.read.format("delta").load(PATIENT_SUMMARY.path(root)).select("person_key")
                  .sample(fraction=min(1.0, 3 * args.requests / size), seed=size).limit(args.requests))
        people = [row.person_key for row in sample.collect()]  # bounded: --requests keys
        random.Random(size).shuffle(people)
        process, token = serve(settings, root, args.port, out / "tokens.yaml")
        try:
            found = {"persons": size, **made, **measure(f"http://127.0.0.1:{args.port}", token, people,
                                                          args.requests, args.seconds, args.clients)}
        finally:
            process.terminate()
            process.wait(30)
        print(json.dumps(found), flush=True)
        results.append(found)
    print(write_results("api", "sizes", results, spark, source=source, target_p95_ms=TARGET_P95_MS))


if __name__ == "__main__":
    main()
