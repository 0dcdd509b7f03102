"""Generator throughput and memory at two sizes: persons/s, events/s, peak resident memory.

    .venv/bin/python bench/generator_scale.py --out var/bench/gen --sizes 100000 1000000 --workers 2

Each size is generated from scratch (its folder is replaced). Peak memory is the largest resident set
of the parent and of any worker process (getrusage). Results go to stdout as JSON lines and to
bench/results/<date>-generator.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import time
from pathlib import Path

from lakehouse.synth.generator import generate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="var/bench/gen")
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--keep", action="store_true", help="keep the generated regions (they are large)")
    args = parser.parse_args()
    results = []
    for size in args.sizes:
        out = Path(args.out) / f"p{size}"
        started = time.perf_counter()
        result = generate(out, patients=size, workers=args.workers, overwrite=True)
        seconds = time.perf_counter() - started
        events = sum(result.rows.values())
        disk = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
        peak_mb = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                      resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024
        row = {"persons": size, "events": events, "files": result.files, "seconds": round(seconds, 1),
               "persons_per_s": round(size / seconds), "events_per_s": round(events / seconds),
               "peak_rss_mb": round(peak_mb), "bytes_on_disk": disk, "bytes_per_person": round(disk / size),
               "workers": args.workers}
        print(json.dumps(row), flush=True)
        results.append(row)
        if not args.keep:
            import shutil

            shutil.rmtree(out)
    folder = Path(__file__).parent / "results"
    folder.mkdir(exist_ok=True)
    report = {"date": str(dt.date.today()), "cores": os.cpu_count(), "machine": platform.machine(),
              "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9, 1),
              "generator": results}
    (folder / f"{dt.date.today()}-generator.json").write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
