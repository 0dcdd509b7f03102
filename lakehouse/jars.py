"""Delta Lake's JVM jars: resolved once from Maven Central into a project cache, then passed as spark.jars.

Spark's own Ivy resolution needs the network at every cold start; this cache makes later runs offline.
Only jars whose artifact the pip-installed Spark does not already ship are kept, so Spark's own
Hadoop, Jackson, Scala and Parquet jars are never shadowed by older copies.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from lakehouse.errors import EnvironmentProblem

MANIFEST = "MANIFEST"
_VERSION_SUFFIX = re.compile(r"-\d[\w.]*(-\d+)?\.jar$")


def artifact_of(jar_name: str) -> str:
    """`delta-storage-4.4.0.jar` -> `delta-storage`; `zstd-jni-1.5.7-3.jar` -> `zstd-jni`."""
    return _VERSION_SUFFIX.sub("", jar_name)


def spark_jar_dir() -> Path:
    import pyspark

    return Path(pyspark.__file__).parent / "jars"


def fetch(pom: Path, cache: Path) -> list[Path]:
    """Resolve the pom's dependencies with Maven and keep those Spark lacks in `cache`."""
    if shutil.which("mvn") is None:
        raise EnvironmentProblem("Maven (mvn) is needed once to fetch Delta's jars: apt-get install maven")
    shipped = {artifact_of(p.name) for p in spark_jar_dir().glob("*.jar")}
    with tempfile.TemporaryDirectory() as tmp:
        cmd = ["mvn", "-q", "-B", "-f", str(pom), "dependency:copy-dependencies",
               f"-DoutputDirectory={tmp}", "-DincludeScope=runtime"]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise EnvironmentProblem(
                "Maven could not resolve Delta's jars from Maven Central:\n"
                + (done.stdout + done.stderr)[-2000:]
            )
        wanted = sorted(p for p in Path(tmp).glob("*.jar") if artifact_of(p.name) not in shipped)
        if not any(p.name.startswith("delta-spark") for p in wanted):
            raise EnvironmentProblem(f"Maven resolved no delta-spark jar from {pom}")
        if cache.exists():
            shutil.rmtree(cache)
        cache.mkdir(parents=True)
        for jar in wanted:
            shutil.copy2(jar, cache / jar.name)
    (cache / MANIFEST).write_text("".join(f"{p.name}\n" for p in wanted))
    jars = [cache / p.name for p in wanted]
    write_spark_defaults(jars)
    return jars


def write_spark_defaults(jars: list[Path]) -> Path:
    """Put the cached jars in the venv Spark's spark-defaults.conf.

    Every launch of this Spark (`spark-submit jobs/x.py`, `pyspark`, a Python SparkSession) reads
    this file, so a job submitted as plain `spark-submit jobs/ingest.py` finds Delta on the driver's
    classpath without `--jars`. The file lives in the virtual environment, never in git.
    """
    conf_dir = spark_jar_dir().parent / "conf"
    conf_dir.mkdir(exist_ok=True)
    target = conf_dir / "spark-defaults.conf"
    target.write_text(
        "# written by `make setup` (lakehouse.jars): Delta Lake's cached jars\n"
        f"spark.jars {','.join(str(j.resolve()) for j in jars)}\n"
        "spark.sql.extensions io.delta.sql.DeltaSparkSessionExtension\n"
        "spark.sql.catalog.spark_catalog org.apache.spark.sql.delta.catalog.DeltaCatalog\n"
    )
    return target


def cached(cache: Path) -> list[Path]:
    """The cached jars, or a clear error saying how to get them."""
    manifest = cache / MANIFEST
    if not manifest.exists():
        raise EnvironmentProblem(
            f"Delta's jars are not cached at {cache}: run `make setup` "
            "(it fetches them once from Maven Central)"
        )
    jars = [cache / name for name in manifest.read_text().split()]
    missing = [str(j) for j in jars if not j.exists()]
    if missing:
        raise EnvironmentProblem(f"jar cache {cache} is incomplete ({', '.join(missing)}): run `make setup`")
    return jars


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lakehouse.jars", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    fetch_cmd = sub.add_parser("fetch", help="resolve the jars with Maven into the cache")
    fetch_cmd.add_argument("--pom", type=Path, required=True)
    fetch_cmd.add_argument("--cache", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        jars = fetch(args.pom, args.cache)
    except EnvironmentProblem as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    print(f"cached {len(jars)} jars in {args.cache}: {', '.join(j.name for j in jars)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
