"""The SQL endpoint: Spark's Thrift JDBC/ODBC server (HiveServer2 protocol, what BI tools speak) and a Spark
Connect server (what a remote notebook speaks), in one JVM with Delta, every served table registered as
`<layer>.<table>`.

One JVM, because an embedded Derby metastore admits one process: the driver starts Spark with Hive support and
the Spark Connect plugin, registers the tables, then starts the Thrift server on the same SparkContext
(`HiveThriftServer2.startWithContext`). The metastore is made anew at each start under the run folder, so it
always describes the configured root. Only the layers in `services.sql.layers` (silver and gold; bronze, ops
and vault never) are registered.
"""

from __future__ import annotations

import os
import shutil
import signal
import threading
from pathlib import Path

from lakehouse import io, jars, progress
from lakehouse.config import Settings
from lakehouse.errors import UsageError
from lakehouse.services.daemon import Daemon, write_ready
from lakehouse.spark import build_spark, launched_by_spark_submit

NAME = "sql"


def daemon(settings: Settings) -> Daemon:
    return Daemon.of(settings, NAME)


def endpoints(host: str, thrift_port: int, connect_port: int) -> dict[str, str]:
    return {"jdbc": f"jdbc:hive2://{host}:{thrift_port}/default", "connect": f"sc://{host}:{connect_port}"}


def server_conf(settings: Settings, folder: Path, host: str, thrift_port: int, connect_port: int) -> dict[str, str]:
    """Spark settings of the endpoint's JVM: Hive catalog in the run folder, both servers' addresses."""
    conf = {
        "spark.sql.catalogImplementation": "hive",
        "spark.sql.runSQLOnFiles": "false",  # no SELECT ... FROM delta.`<root>/vault/...`: registered tables only
        "spark.sql.warehouse.dir": str(folder / "warehouse"),
        "spark.hadoop.javax.jdo.option.ConnectionURL":
            f"jdbc:derby:;databaseName={folder / 'metastore_db'};create=true",
        "spark.hadoop.hive.server2.thrift.bind.host": host,
        "spark.hadoop.hive.server2.thrift.port": str(thrift_port),
        "spark.plugins": "org.apache.spark.sql.connect.SparkConnectPlugin",
        "spark.connect.grpc.binding.address": host,
        "spark.connect.grpc.binding.port": str(connect_port),
    }
    if not launched_by_spark_submit():
        # the Thrift server opens sessions on threads that do not see spark.jars: Delta goes on the JVM's own
        # class path (under spark-submit, pass --driver-class-path with Delta's jars)
        cached = jars.cached(Path(settings.path(settings.main.jar_cache)))
        conf["spark.driver.extraClassPath"] = ":".join(str(j) for j in cached)
        conf["spark.driver.extraJavaOptions"] = f"-Dderby.system.home={folder}"
    return conf


def serve(settings: Settings, thrift_port: int | None = None, connect_port: int | None = None) -> None:
    """Run both servers in this process until SIGTERM or SIGINT (`lakehouse serve-sql --foreground`)."""
    sql = settings.main.services.sql
    thrift_port, connect_port = thrift_port or sql.thrift_port, connect_port or sql.connect_port
    server = daemon(settings)
    running = server.pid()
    if running and running != os.getpid():  # its metastore is about to be made anew
        raise UsageError(f"the SQL endpoint is already running (pid {running}); stop it first")
    folder = server.folder
    folder.mkdir(parents=True, exist_ok=True)
    for stale in ("metastore_db", "warehouse"):
        shutil.rmtree(folder / stale, ignore_errors=True)
    spark = build_spark(settings, server_conf(settings, folder, sql.host, thrift_port, connect_port))
    served = [ref for ref in io.list_tables(spark, settings.root) if ref.layer in sql.layers]
    for done, ref in enumerate(served, start=1):
        progress.step("register", ref.qualified, done, len(served), "tables")
        io.register(spark, ref, settings.root)
    jvm = spark.sparkContext._jvm  # noqa: SLF001
    thrift = jvm.org.apache.spark.sql.hive.thriftserver.HiveThriftServer2.startWithContext(
        spark._jsparkSession.sqlContext())  # noqa: SLF001
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    urls = endpoints(sql.host, thrift_port, connect_port)
    write_ready(server.ready_file, {**urls, "tables": [ref.qualified for ref in served]})
    print(f"serving {len(served)} tables: {urls}", flush=True)
    stop.wait()
    thrift.stop()
    spark.stop()


def start(settings: Settings, argv: list[str]) -> dict:
    """Start the servers detached (`argv`: the serve-sql command with --foreground) and return their endpoints."""
    return daemon(settings).start(argv, timeout=settings.main.services.sql.start_timeout_seconds)
