"""The one place a SparkSession is built: Delta extensions, the configured master, the cached jars."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from pyspark.sql import SparkSession

from lakehouse import jars
from lakehouse.config import Settings
from lakehouse.errors import EnvironmentProblem

LOOPBACK = "127.0.0.1"
# how a session is sized, not what its results are: a running session keeps its own values
SIZING = {"spark.sql.shuffle.partitions", "spark.databricks.delta.snapshotPartitions",
          "spark.sql.sources.parallelPartitionDiscovery.threshold"}


def check_java() -> str:
    """Return `java -version`'s first line, or explain what is missing."""
    java = Path(os.environ["JAVA_HOME"]) / "bin" / "java" if os.environ.get("JAVA_HOME") else shutil.which("java")
    if not java or not Path(java).exists():
        raise EnvironmentProblem(
            "Java not found: Spark 4 needs Java 17 or newer on PATH or in JAVA_HOME "
            "(Debian: apt-get install openjdk-17-jre-headless)"
        )
    out = subprocess.run([str(java), "-version"], capture_output=True, text=True)
    return (out.stderr or out.stdout).splitlines()[0]


def launched_by_spark_submit() -> bool:
    """spark-submit starts the JVM first and hands Python its gateway; it then owns master and jars."""
    return "PYSPARK_GATEWAY_PORT" in os.environ


def build_spark(settings: Settings, extra: dict[str, str] | None = None) -> SparkSession:
    """A SparkSession with Delta, configured from settings; `extra` wins over everything (tests).

    When a session already runs in this process (a notebook's, or the test run's when it calls the CLI
    in-process), it is reused: the settings the data depends on (time zone, overwrite mode, change data feed,
    charsets) are applied to it as always, but the sizing settings it started with (the test run's 2 shuffle
    partitions) are kept."""
    active = SparkSession.getActiveSession()
    if active is None:
        check_java()
    os.environ.setdefault("SPARK_LOCAL_IP", LOOPBACK)
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # workers use this interpreter, with its packages
    spark_settings = settings.main.spark
    builder = SparkSession.builder.appName(spark_settings.app_name)
    conf: dict[str, str] = {
        "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
        "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
        "spark.sql.shuffle.partitions": str(spark_settings.shuffle_partitions),
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.ui.showConsoleProgress": "false",
        "spark.databricks.delta.snapshotPartitions": str(spark_settings.shuffle_partitions),
        "spark.databricks.delta.retentionDurationCheck.enabled": "true",
        "spark.sql.sources.partitionOverwriteMode": "dynamic",
        # every table keeps its change data feed: gold's increment reads which persons silver changed
        "spark.databricks.delta.properties.defaults.enableChangeDataFeed": "true",
        # Spark 4 accepts only UTF/ISO charsets unless told to use any Java charset (GB18030, GBK)
        "spark.sql.legacy.javaCharsets": "true",
        # reading a list of files (ingest reads each new file by name) lists them on the driver instead of
        # a Spark job of one task per path: 67 files hashed in 0.8 s instead of 5 s on the test machine
        "spark.sql.sources.parallelPartitionDiscovery.threshold": "10000",
    }
    if not launched_by_spark_submit():
        jar_cache = Path(settings.path(settings.main.jar_cache))
        conf.update({
            "spark.master": spark_settings.master,
            "spark.jars": ",".join(str(j) for j in jars.cached(jar_cache)),
            "spark.driver.memory": spark_settings.driver_memory,
        })
        if spark_settings.master.startswith("local"):
            conf.update({"spark.driver.host": LOOPBACK, "spark.driver.bindAddress": LOOPBACK})
    conf.update(spark_settings.extra)
    conf.update(extra or {})
    if active is not None:
        started_with = active.sparkContext.getConf()
        conf = {key: value for key, value in conf.items() if key not in SIZING or not started_with.contains(key)}
    for key, value in conf.items():
        builder = builder.config(key, value)
    try:
        spark = builder.getOrCreate()
    except Exception as err:  # the JVM failed to start: say what to check
        raise EnvironmentProblem(f"Spark failed to start ({type(err).__name__}: {err}); check Java 17 "
                                 "and run `make setup` to cache Delta's jars") from err
    spark.sparkContext.setLogLevel("ERROR")
    return spark
