"""Bronze ingest throughput per format at two sizes, against a plain Spark read of the same files.

    .venv/bin/python bench/ingest_scale.py --sizes 7500 75000

For each size (persons; the default dialect mix of five hospitals, one day) a region is generated, then
for each format (csv: plain, TSV, BOM and gzip CSV of H01-H04; hl7v2: H04's labs; fhir_ndjson: H05) the
files of that format are linked into a landing folder of their own and:

  baseline  a plain Spark read of the same files written as Delta: CSV read per hospital and entity with
            its delimiter, encoding and header, NDJSON with Spark's JSON reader (schema inferred), HL7 v2
            (no Spark reader exists) as text lines; nothing else
  ingest    `lakehouse ingest` into a fresh root: hashing and the ledger, parsing, quarantine, line
            numbers, lineage, the per-file read-back check
  rerun     ingest again on the same folder (every file already in the ledger: a no-op)

Both run in the same Spark session (local[2]), baseline first. Rows are the records ingest read
(lines, OBX segments, NDJSON lines). Results go to stdout as JSON lines and to
bench/results/<date>-ingest.json.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from _common import parser as bench_parser
from _common import session, write_results

from lakehouse.bronze.ingest import ingest
from lakehouse.synth.generator import generate

FORMATS = ("csv", "hl7v2", "fhir_ndjson")


def link_format(settings, landing: Path, target: Path, fmt: str) -> list[tuple[str, str, Path]]:
    """Symlink the landing files of one contract format into `target`; return (hospital, entity, file)."""
    import fnmatch

    linked = []
    for path in sorted(p for p in landing.rglob("*") if p.is_file() and p.stat().st_size > 0):
        hospital = path.relative_to(landing).parts[0]
        contract = settings.sources.get(hospital)
        entity = next((e for e, s in (contract.entities.items() if contract else [])
                       if fnmatch.fnmatch(path.name, s.pattern) and s.format == fmt), None)
        if entity is None or "truncated" in path.name:  # the corrupt gzip fails both ways: left out
            continue
        destination = target / path.relative_to(landing)
        destination.parent.mkdir(parents=True, exist_ok=True)
        destination.symlink_to(path)
        linked.append((hospital, entity, destination))
    return linked


def baseline(spark, settings, files: list[tuple[str, str, Path]], fmt: str, root: Path) -> float:
    started = time.perf_counter()
    groups: dict[tuple[str, str], list[str]] = {}
    for hospital, entity, path in files:
        groups.setdefault((hospital, entity), []).append(str(path))
    for (hospital, entity), paths in sorted(groups.items()):
        source = settings.sources[hospital].entities[entity]
        if fmt == "csv":
            frame = (spark.read.option("header", str(source.header).lower()).option("sep", source.delimiter)
                     .option("encoding", source.encoding).csv(paths))
        elif fmt in ("fhir_ndjson", "jsonl"):
            frame = spark.read.json(paths)
        else:
            frame = spark.read.text(paths)
        frame.write.format("delta").mode("append").save(str(root / f"{hospital}_{entity}"))
    return time.perf_counter() - started


def main() -> None:
    parser = bench_parser(__doc__, "var/bench/ingest", [7_500, 75_000])
    parser.add_argument("--formats", nargs="+", default=list(FORMATS), choices=FORMATS)
    parser.add_argument("--results", default=None, help="results file name (default <date>-ingest.json)")
    args = parser.parse_args()
    out, settings, spark = session(args)
    results = []
    for size in args.sizes:
        region = out / f"p{size}"
        generated = generate(region, patients=size, workers=args.workers, overwrite=True)
        for fmt in args.formats:
            work = out / f"p{size}-{fmt}"
            shutil.rmtree(work, ignore_errors=True)
            files = link_format(settings, generated.landing, work / "landing", fmt)
            plain = baseline(spark, settings, files, fmt, work / "baseline")
            local = settings.model_copy(update={"root": str(work / "root")})
            started = time.perf_counter()
            result = ingest(spark, local, str(work / "landing"), f"bench-{size}-{fmt}")
            seconds = time.perf_counter() - started
            started = time.perf_counter()
            again = ingest(spark, local, str(work / "landing"), f"bench-{size}-{fmt}-again")
            rerun = time.perf_counter() - started
            totals = result.totals
            row = {"persons": size, "format": fmt, "files": len(files), "rows": totals["rows_read"],
                   "rows_quarantined": totals["rows_quarantined"],
                   "bytes": sum(p.stat().st_size for _, _, p in files),
                   "baseline_s": round(plain, 1), "ingest_s": round(seconds, 1), "ratio": round(seconds / plain, 2),
                   "ingest_rows_per_s": round(totals["rows_read"] / seconds),
                   "baseline_rows_per_s": round(totals["rows_read"] / plain),
                   "rerun_s": round(rerun, 1), "rerun_new_files": len(again.ledger),
                   "error": str(result.error) if result.error else None}
            print(json.dumps(row), flush=True)
            results.append(row)
            shutil.rmtree(work)
        shutil.rmtree(region)
    write_results("ingest", "ingest", results, spark, args.results)


if __name__ == "__main__":
    main()
