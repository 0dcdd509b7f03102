"""Who is asking, and what they may read: API tokens mapped to a holder, a role of conf/access.yaml and, for a
hospital-scoped role, a hospital.

Tokens are random strings shown once; the tokens file (ignored by git, like the other secrets) keeps only their
SHA-256, so a leaked file opens nothing.
"""

from __future__ import annotations

import fcntl
import getpass
import hashlib
import logging
import os
import re
import secrets as pysecrets
import time
from dataclasses import dataclass
from pathlib import Path

import yaml
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from lakehouse import io
from lakehouse.catalog import AUDIT_LOG, ENCOUNTER, LAYERS, TableRef
from lakehouse.config import Settings
from lakehouse.errors import ConfigError, LakehouseError, UsageError
from lakehouse.services.audit import AuditLog

TOKENS_ENV = "LAKEHOUSE_API_TOKENS_FILE"
HOLDER = re.compile(r"^[\w.@-]{1,64}$")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Principal:
    name: str
    role: str
    hospital_id: str | None = None


class AccessDenied(LakehouseError):
    """A read the policy does not allow (audited before it is raised)."""

    exit_code = 3


def tokens_file(settings: Settings) -> Path:
    return Path(os.environ.get(TOKENS_ENV) or settings.path(settings.main.services.api.tokens_file))


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def load_tokens(settings: Settings) -> dict[str, Principal]:
    """token hash -> Principal, every entry checked against the policy and the source contracts."""
    file = tokens_file(settings)
    if not file.exists():
        return {}
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise ConfigError(str(file), "<yaml>", f"not valid YAML: {err}") from err
    entries = data.get("tokens") if isinstance(data, dict) else None
    if not isinstance(entries, dict):
        raise ConfigError(str(file), "tokens", "expected a mapping of token SHA-256 -> {name, role, hospital_id}")
    found = {}
    for digest, entry in entries.items():
        key = f"tokens.{digest}"
        if not re.fullmatch(r"[0-9a-f]{64}", str(digest)):
            raise ConfigError(str(file), key, "a token is stored as its SHA-256 (64 hex characters)")
        if not isinstance(entry, dict) or set(entry) - {"name", "role", "hospital_id"}:
            raise ConfigError(str(file), key, "expected {name, role, hospital_id}")
        found[digest] = _principal(settings, str(file), key, entry.get("name"), entry.get("role"),
                                   entry.get("hospital_id"))
    return found


def _principal(settings: Settings, file: str, key: str, name, role, hospital) -> Principal:
    policy = settings.access
    if not isinstance(name, str) or not HOLDER.match(name):
        raise ConfigError(file, f"{key}.name", "a holder name of letters, digits and . _ @ -")
    if policy is None or role not in policy.roles:
        known = sorted(policy.roles) if policy else []
        raise ConfigError(file, f"{key}.role", f"unknown role {role!r}; known: {known}")
    if policy.roles[role].hospital_scoped and hospital not in settings.sources:
        raise ConfigError(file, f"{key}.hospital_id",
                          f"role {role} is hospital-scoped: give one of {sorted(settings.sources)}")
    if not policy.roles[role].hospital_scoped and hospital is not None:
        raise ConfigError(file, f"{key}.hospital_id", f"role {role} is not hospital-scoped")
    return Principal(name, role, hospital)


def add_token(settings: Settings, name: str, role: str, hospital_id: str | None = None) -> tuple[str, Path]:
    """Mint a token for a holder, store its hash, and return the token (shown once) and the file."""
    file = tokens_file(settings)
    try:
        _principal(settings, str(settings.conf_dir / "access.yaml"), "roles", name, role, hospital_id)
    except ConfigError as err:
        raise UsageError(f"cannot issue the token: {err.message}") from None
    file.parent.mkdir(parents=True, exist_ok=True)
    with open(file.with_name(file.name + ".lock"), "w") as lock:  # two issuers at once lose no token
        fcntl.flock(lock, fcntl.LOCK_EX)
        load_tokens(settings)  # refuse to extend a broken file
        data = (yaml.safe_load(file.read_text(encoding="utf-8")) if file.exists() else None) or {"tokens": {}}
        token = pysecrets.token_urlsafe(32)
        data["tokens"][token_hash(token)] = {"name": name, "role": role,
                                             **({"hospital_id": hospital_id} if hospital_id else {})}
        write_private(file, "# lakehouse API tokens (SHA-256 of each token): keep out of git\n"
                      + yaml.safe_dump(data, sort_keys=True))
    return token, file


def write_private(file: Path, text: str) -> None:
    """Replace the file in one step (a reader never sees half of it), readable by its owner only from the start."""
    partial = file.with_name(f".{file.name}.{os.getpid()}.tmp")
    with os.fdopen(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w", encoding="utf-8") as out:
        out.write(text)
    os.replace(partial, file)


def require(settings: Settings, principal: Principal, tables: list[str]) -> None:
    """Raise AccessDenied naming the first table the principal's role may not read."""
    assert settings.access is not None
    for table in tables:
        if not settings.access.may_read(principal.role, table):
            raise AccessDenied(f"role {principal.role} may not read {table} (conf/access.yaml)")


def hospital_scope(settings: Settings, principal: Principal) -> str | None:
    """The hospital a principal's reads are limited to, or None for the whole region."""
    assert settings.access is not None
    return principal.hospital_id if settings.access.roles[principal.role].hospital_scoped else None


class TokenBook:
    """The tokens file as a running server sees it: re-read when it changes, so a token issued or removed with
    the server up takes effect at once. A broken edit keeps the last good tokens (and is logged)."""

    def __init__(self, settings: Settings):
        self.settings, self.file = settings, tokens_file(settings)
        self._stamp = self._mtime()
        self._tokens = load_tokens(settings)  # a bad file is refused before the server starts

    def _mtime(self) -> tuple[int, int, int] | None:
        try:
            stat = self.file.stat()
        except FileNotFoundError:
            return None
        return stat.st_ino, stat.st_mtime_ns, stat.st_size  # a replaced file is a new inode

    def __len__(self) -> int:
        return len(self._tokens)

    def holders(self) -> dict[str, Principal]:
        """token hash -> holder, as the file says now."""
        stamp = self._mtime()
        if stamp != self._stamp:
            try:
                self._tokens, self._stamp = load_tokens(self.settings), stamp
            except ConfigError as err:  # tried again at the next request
                log.error("keeping the previous API tokens: %s", err)
        return self._tokens

    def get(self, token: str) -> Principal | None:
        return self.holders().get(token_hash(token))


# --- reading tables through the policy (notebooks, exports, the MEDS export) -----------------------------------

USER_ENV, ROLE_ENV, HOSPITAL_ENV = "LAKEHOUSE_USER", "LAKEHOUSE_ROLE", "LAKEHOUSE_HOSPITAL"
DEFAULT_ROLE = "admin"  # whoever runs jobs holds the root's files: the platform's operator


def current(settings: Settings, role: str | None = None, hospital_id: str | None = None) -> Principal:
    """Who is at the keyboard: $LAKEHOUSE_USER or the OS user, in `role` or $LAKEHOUSE_ROLE (default admin) and,
    for a hospital-scoped role, `hospital_id` or $LAKEHOUSE_HOSPITAL; checked against conf/access.yaml."""
    name = os.environ.get(USER_ENV) or getpass.getuser()
    role = role or os.environ.get(ROLE_ENV) or DEFAULT_ROLE
    hospital_id = hospital_id or os.environ.get(HOSPITAL_ENV) or None
    try:
        return _principal(settings, str(settings.conf_dir / "access.yaml"), "roles", name, role, hospital_id)
    except ConfigError as err:
        raise UsageError(f"cannot act as {name} in role {role}: {err.message} "
                         f"(${USER_ENV}, ${ROLE_ENV}, ${HOSPITAL_ENV})") from None


def require_admin(settings: Settings, principal: Principal, what: str) -> None:
    assert settings.access is not None
    if not settings.access.roles[principal.role].admin:
        raise AccessDenied(f"{what} needs an admin role; {principal.name} acts as {principal.role} "
                           f"(${ROLE_ENV}, conf/access.yaml)")


class Reader:
    """Tables as one principal may see them, each read audited in ops.audit_log (refused ones too) with its
    purpose, Delta version, columns and rows. One reader is one audit writer: its entries form one chain.

    A read is refused (AccessDenied) when the role may not read the table, or names a column the role does not
    see; hidden columns are otherwise dropped. A hospital-scoped role gets the rows of persons with an encounter
    at its hospital (a semi-join with silver.encounter, recorded among the tables read), or of its hospital_id for
    a table without person_key; a table with neither is refused to it.
    """

    def __init__(self, spark: SparkSession, settings: Settings, principal: Principal, purpose: str,
                 writer_kind: str = "read"):
        if not purpose.strip():
            raise UsageError("a read through the access policy needs a declared purpose (recorded in ops.audit_log)")
        assert settings.access is not None
        self.spark, self.settings, self.principal, self.purpose = spark, settings, principal, purpose
        self.role = settings.access.roles[principal.role]
        self._audit = AuditLog(settings.root, flush_seconds=60, writer_kind=writer_kind)

    def table(self, name: str, columns: list[str] | None = None, version: int | None = None) -> DataFrame:
        """`<layer>.<table>` at `version` (default: the latest) as this principal may see it."""
        started = time.monotonic()
        record = {"target": name, "tables": [name], "versions": {}}
        try:
            df = self._open(name, columns, version, record)
        except (AccessDenied, UsageError) as err:
            self._log(record, started, f"refused: {err}", 403)
            raise
        self._log(record, started, "ok", 0)
        return df

    def _open(self, name: str, columns: list[str] | None, version: int | None, record: dict) -> DataFrame:
        layer, _, table = name.partition(".")
        if layer not in LAYERS or not table:
            raise UsageError(f"{name!r} is not <layer>.<table> with a layer of {', '.join(LAYERS)}")
        if not self.settings.access.may_read(self.principal.role, name):
            raise AccessDenied(f"role {self.principal.role} may not read {name} (conf/access.yaml)")
        ref = TableRef(layer, table, "")
        if not io.exists(self.spark, ref, self.settings.root):
            raise UsageError(f"{name} does not exist under {self.settings.root}")
        version = io.latest_version(self.spark, ref, self.settings.root) if version is None else version
        df = io.read(self.spark, ref, self.settings.root, version)
        record["versions"][name] = version
        record["rows"] = io.recorded_rows(self.spark, ref, self.settings.root, version)
        hidden = [c for c in df.columns if self.role.hides(name, c)]
        wanted = list(columns) if columns else [c for c in df.columns if c not in hidden]
        unknown = [c for c in wanted if c not in df.columns]
        if unknown:
            raise UsageError(f"{name} has no column {', '.join(unknown)}")
        withheld = [c for c in wanted if c in hidden]
        if withheld:
            raise AccessDenied(f"role {self.principal.role} may not read {name}.{', '.join(withheld)} "
                               "(hidden_columns in conf/access.yaml)")
        record["columns"] = wanted
        hospital = hospital_scope(self.settings, self.principal)
        if hospital is not None:
            df = self._scoped(df, name, hospital, record)
        return df.select(*wanted)

    def _scoped(self, df: DataFrame, name: str, hospital: str, record: dict) -> DataFrame:
        if "person_key" in df.columns:
            version = io.latest_version(self.spark, ENCOUNTER, self.settings.root)
            if version is None:
                raise UsageError(f"{ENCOUNTER.qualified} does not exist: rows cannot be limited to {hospital}")
            record["tables"].append(ENCOUNTER.qualified)
            record["versions"][ENCOUNTER.qualified] = version
            seen = (io.read(self.spark, ENCOUNTER, self.settings.root, version)
                    .where(F.col("hospital_id") == hospital).select("person_key").distinct())
            return df.join(seen, "person_key", "left_semi")
        if "hospital_id" in df.columns:
            return df.where(F.col("hospital_id") == hospital)
        raise AccessDenied(f"role {self.principal.role} sees hospital {hospital} only, and {name} has neither "
                           "person_key nor hospital_id to limit it by")

    def _log(self, record: dict, started: float, outcome: str, status: int) -> None:
        who = self.principal
        appended = self._audit.write(actor=who.name, role=who.role, hospital_id=who.hospital_id, action="read",
                           purpose=self.purpose, outcome=outcome[:1000], status=status,
                           duration_ms=(time.monotonic() - started) * 1000, **record)
        if not appended:
            raise LakehouseError(f"the read of {record['target']} was not audited (its row could not be appended "
                                 f"to {AUDIT_LOG.qualified}; see the log above): nothing is read unaudited")
