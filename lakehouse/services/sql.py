"""The SQL endpoint: Spark's Thrift JDBC/ODBC server (HiveServer2 protocol, what BI tools speak) and a Spark
Connect server (what a remote notebook speaks), in one JVM with Delta, every served table registered as
`<layer>.<table>`.

One JVM, because an embedded Derby metastore admits one process: the driver starts Spark with Hive support and
the Spark Connect plugin, registers the tables, then starts the Thrift server on the same SparkContext
(`HiveThriftServer2.startWithContext`). The metastore is made anew at each start under the run folder, so it
always describes the configured root. Only the layers in `services.sql.layers` (silver and gold; bronze, ops
and vault never) are registered.

Who may connect. A SQL session reads whole tables: Spark has no per-column or per-row authorisation. So the
endpoint admits only the roles that conf/access.yaml lets read every served table whole (today: admin), and
refuses the rest, who read through the REST API or `lakehouse.access`:
- JDBC: HiveServer2's CUSTOM authentication with `lakehouse.sql.TokenAuthenticator` (jvm/, compiled at the
  first start): user name = a token holder's name, password = their token (`lakehouse api-token`). The driver
  writes the holders it reads from the tokens file, and whether each one's role may connect, to a private file
  the authenticator reads at every login; a token issued or withdrawn takes effect at the next login.
- Spark Connect: a pre-shared token (`spark.connect.authenticate.token`), made anew at each start and kept in the
  run folder, readable by the endpoint's operator only. Spark Connect can read any path the service can, so it
  is the operator's (admin's) door.
Every login (admitted or refused) and every statement or Spark Connect operation is journalled by
`lakehouse.sql.AuditListener` and appended by the driver to ops.audit_log (writer `sql@...`).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import secrets as pysecrets
import shutil
import signal
import subprocess
import tempfile
import threading
import zipfile
from pathlib import Path

from lakehouse import access, io, jars, progress
from lakehouse.config import AccessPolicy, Settings
from lakehouse.errors import EnvironmentProblem, UsageError
from lakehouse.services.audit import AuditLog
from lakehouse.services.daemon import Daemon, write_ready
from lakehouse.spark import build_spark, launched_by_spark_submit

NAME = "sql"
JVM_SOURCES = Path(__file__).parent / "jvm"
AUTHENTICATOR, LISTENER = "lakehouse.sql.TokenAuthenticator", "lakehouse.sql.AuditListener"
HOLDERS_PROPERTY, JOURNAL_PROPERTY = "lakehouse.sql.holders", "lakehouse.sql.journal"
STATEMENT_CHARS = 4000  # an audited statement is cut to this many characters


def daemon(settings: Settings) -> Daemon:
    return Daemon.of(settings, NAME)


def endpoints(host: str, thrift_port: int, connect_port: int) -> dict[str, str]:
    # a Spark Connect client sends its token over plain TCP only to "localhost" (to any other name, over TLS)
    connect_host = "localhost" if host in ("127.0.0.1", "localhost") else host
    return {"jdbc": f"jdbc:hive2://{host}:{thrift_port}/default", "connect": f"sc://{connect_host}:{connect_port}"}


def refusal(policy: AccessPolicy, role: str, tables: list[str]) -> str | None:
    """Why a role may not use the endpoint, which serves `tables` whole; None when it may."""
    spec = policy.roles.get(role)
    if spec is None:
        return f"role {role} is not in conf/access.yaml"
    whole = "a SQL session reads whole tables: use the REST API"
    if spec.hospital_scoped:
        return f"role {role} sees its own hospital's persons only, and {whole}"
    for table in tables:
        if not policy.may_read(role, table):
            return f"role {role} may not read {table}, which this endpoint serves (conf/access.yaml)"
        if spec.hides_any(table):
            return f"role {role} has columns of {table} withheld, and {whole}"
    return None


def holders_text(holders: dict[str, access.Principal], policy: AccessPolicy, tables: list[str]) -> str:
    """The authenticator's file: token SHA-256, holder, role, and "yes" or why the role may not connect."""
    return "".join(f"{digest}\t{who.name}\t{who.role}\t{refusal(policy, who.role, tables) or 'yes'}\n"
                   for digest, who in sorted(holders.items()))


def guard_jar(folder: Path) -> Path:
    """The authenticator and audit listener (jvm/), compiled against the installed Spark once per source change."""
    sources = sorted(JVM_SOURCES.rglob("*.java"))
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in sources)).hexdigest()[:16]
    jar = folder / f"lakehouse-sql-{digest}.jar"
    if jar.exists():
        return jar
    java_home = os.environ.get("JAVA_HOME")
    javac = shutil.which("javac", path=f"{java_home}/bin" if java_home else None) or shutil.which("javac")
    if javac is None:
        raise EnvironmentProblem("the SQL endpoint compiles its token check (lakehouse/services/jvm) with javac: "
                                 "install a JDK 17 (Debian: apt-get install openjdk-17-jdk-headless)")
    with tempfile.TemporaryDirectory() as classes:
        done = subprocess.run([javac, "--release", "17", "-nowarn", "-cp", f"{jars.spark_jar_dir()}/*",
                               "-d", classes, *map(str, sources)], capture_output=True, text=True)
        if done.returncode != 0:
            raise EnvironmentProblem(f"javac could not compile {JVM_SOURCES}:\n{(done.stdout + done.stderr)[-2000:]}")
        for old in folder.glob("lakehouse-sql-*.jar"):
            old.unlink()
        partial = jar.with_suffix(".partial")
        with zipfile.ZipFile(partial, "w") as out:
            for cls in sorted(Path(classes).rglob("*.class")):
                out.write(cls, cls.relative_to(classes))
        os.replace(partial, jar)
    return jar


class Journal:
    """The JVM's journal of logins and statements, drained into ops.audit_log (complete lines only)."""

    def __init__(self, file: Path, audit: AuditLog):
        self.file, self.audit, self.offset = file, audit, 0

    def drain(self) -> int:
        if not self.file.exists():
            return 0
        with open(self.file, "rb") as journal:
            journal.seek(self.offset)
            data = journal.read()
        complete = data[:data.rfind(b"\n") + 1]
        self.offset += len(complete)
        entries = [json.loads(line) for line in complete.decode("utf-8").splitlines() if line.strip()]
        for entry in entries:
            self.audit.record(**audit_columns(entry))
        return len(entries)


def audit_columns(entry: dict) -> dict:
    """An ops.audit_log row of a journal entry: a login, or a statement (JDBC) or operation (Spark Connect)."""
    what = "login" if entry["kind"] == "login" else (entry.get("statement") or "")[:STATEMENT_CHARS]
    reason = f" -- {entry['reason']}" if entry.get("reason") else ""
    if entry["via"] == "connect":  # whoever holds the endpoint's token: its operator
        actor, role = entry.get("user") or "a Spark Connect client", "admin"
        purpose = "Spark Connect: the endpoint's pre-shared token; the user is the client's own word"
    else:
        actor, role, purpose = entry.get("user"), entry.get("role"), None
    return {"actor": actor, "role": role, "action": f"sql.{entry['via']}", "target": f"{what}{reason}",
            "rows": entry.get("rows"), "outcome": entry["outcome"], "duration_ms": entry.get("duration_ms"),
            "purpose": purpose}


def server_conf(settings: Settings, folder: Path, host: str, thrift_port: int, connect_port: int,
                connect_token: str, guard: Path) -> dict[str, str]:
    """Spark settings of the endpoint's JVM: Hive catalog in the run folder, both servers' addresses, who may
    connect."""
    conf = {
        "spark.sql.catalogImplementation": "hive",
        "spark.sql.runSQLOnFiles": "false",  # no SELECT ... FROM delta.`<root>/vault/...`: registered tables only
        "spark.sql.warehouse.dir": str(folder / "warehouse"),
        "spark.hadoop.javax.jdo.option.ConnectionURL":
            f"jdbc:derby:;databaseName={folder / 'metastore_db'};create=true",
        "spark.hadoop.hive.server2.thrift.bind.host": host,
        "spark.hadoop.hive.server2.thrift.port": str(thrift_port),
        "spark.hadoop.hive.server2.authentication": "CUSTOM",
        "spark.plugins": "org.apache.spark.sql.connect.SparkConnectPlugin",
        "spark.connect.grpc.binding.address": host,
        "spark.connect.grpc.binding.port": str(connect_port),
        "spark.connect.authenticate.token": connect_token,  # redacted in Spark's UI and logs ("token")
    }
    if not launched_by_spark_submit():
        # the Thrift server opens sessions on threads that do not see spark.jars: Delta goes on the JVM's own
        # class path, beside the authenticator (under spark-submit, pass both with --driver-class-path)
        cached = jars.cached(Path(settings.path(settings.main.jar_cache)))
        conf["spark.driver.extraClassPath"] = ":".join(str(j) for j in [*cached, guard])
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
    book = access.TokenBook(settings)  # a bad tokens file is refused before anything starts
    folder = server.folder
    folder.mkdir(parents=True, exist_ok=True)
    for stale in ("metastore_db", "warehouse"):
        shutil.rmtree(folder / stale, ignore_errors=True)
    audit = AuditLog(settings.root, settings.main.services.api.audit_flush_seconds, writer_kind=NAME)
    journal = Journal(folder / "journal.jsonl", audit)
    if journal.drain():  # what a previous endpoint journalled and did not append before it died
        audit.flush()
    if not audit.pending:  # else the journal stays, and this endpoint appends to it
        journal.file.unlink(missing_ok=True)
        journal.offset = 0
    connect_token = pysecrets.token_urlsafe(32)
    access.write_private(folder / "connect.token", connect_token + "\n")
    spark = build_spark(settings, server_conf(settings, folder, sql.host, thrift_port, connect_port, connect_token,
                                              guard_jar(folder)))
    jvm = spark.sparkContext._jvm  # noqa: SLF001
    served = sorted((ref for ref in io.list_tables(spark, settings.root) if ref.layer in sql.layers),
                    key=lambda ref: ref.qualified)
    tables = [ref.qualified for ref in served]
    for done, ref in enumerate(served, start=1):
        progress.step("register", ref.qualified, done, len(served), "tables")
        io.register(spark, ref, settings.root)
    holders, written = folder / "holders.tsv", None

    def refresh_holders() -> None:
        nonlocal written
        text = holders_text(book.holders(), settings.access, tables)
        if text != written:
            access.write_private(holders, text)
            written = text

    refresh_holders()
    jvm.java.lang.System.setProperty(HOLDERS_PROPERTY, str(holders))
    # HiveServer2 makes the authenticator from a HiveConf of its own, which reads hive.* system properties
    jvm.java.lang.System.setProperty("hive.server2.custom.authentication.class", AUTHENTICATOR)
    jvm.java.lang.System.setProperty(JOURNAL_PROPERTY, str(journal.file))
    spark.sparkContext._jsc.sc().addSparkListener(_jvm_object(jvm, LISTENER))  # noqa: SLF001
    thrift = jvm.org.apache.spark.sql.hive.thriftserver.HiveThriftServer2.startWithContext(
        spark._jsparkSession.sqlContext())  # noqa: SLF001
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    urls = endpoints(sql.host, thrift_port, connect_port)
    write_ready(server.ready_file, {**urls, "connect_token_file": str(folder / "connect.token"), "tables": tables})
    print(f"serving {len(served)} tables: {urls}", flush=True)
    audit.start()
    try:
        while not stop.wait(settings.main.services.api.audit_flush_seconds):
            refresh_holders()
            journal.drain()
    finally:
        for closing in (thrift.stop, spark.stop):  # the JVM had the same SIGTERM and may be gone
            with contextlib.suppress(Exception):
                closing()
        journal.drain()
        audit.close()


def _jvm_object(jvm, name: str):
    """An instance of one of jvm/'s classes; a clear error when the driver's class path lacks them."""
    try:
        return functools.reduce(getattr, name.split("."), jvm)()
    except Exception as err:  # py4j: a class it cannot load is a package, and calling it a TypeError
        raise EnvironmentProblem(
            f"{name} is not on the SQL endpoint's class path: under spark-submit, pass the jar `lakehouse "
            f"serve-sql` compiles ({JVM_SOURCES}, lakehouse-sql-*.jar in the run folder) with --driver-class-path"
        ) from err


def start(settings: Settings, argv: list[str]) -> dict:
    """Start the servers detached (`argv`: the serve-sql command with --foreground) and return their endpoints."""
    return daemon(settings).start(argv, timeout=settings.main.services.sql.start_timeout_seconds)
