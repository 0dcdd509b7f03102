"""`lakehouse validate-source`: profile one hospital's dump against its contract, writing nothing.

It reads the files exactly as ingest would (same readers, same quarantine rules) and reports: files
matched per entity and files no pattern matches; for CSV, header columns the contract does not map and
mapped columns the header lacks; per mapped column the share of records where it is absent or empty and
the share of values that do not parse as what the column holds (time, date, number); the records
ingest would quarantine, by reason; and a verdict.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pyspark.sql import Column, SparkSession
from pyspark.sql import functions as F

from lakehouse import progress
from lakehouse.bronze.ingest import LandingFile, groups_of, list_files, match_contract, parse_entity
from lakehouse.catalog import DATE_COLUMNS, NUMBER_COLUMNS, TIME_COLUMNS
from lakehouse.config import EntitySource, Settings
from lakehouse.silver.standardize import clean_text, parse_time

PASS, FAIL = "pass", "fail"


@dataclass
class ColumnProfile:
    entity: str
    column: str
    source: str
    kind: str
    values: int
    empty: int
    unparsed: int

    @property
    def unparsed_share(self) -> float:
        return self.unparsed / self.values if self.values else 0.0


@dataclass
class SourceProfile:
    hospital_id: str
    files: dict[str, list[str]] = field(default_factory=dict)  # entity -> matched files
    unmatched: list[str] = field(default_factory=list)
    unreadable: dict[str, str] = field(default_factory=dict)  # file -> reason
    unmapped: dict[str, list[str]] = field(default_factory=dict)  # entity -> header columns the contract ignores
    missing: dict[str, list[str]] = field(default_factory=dict)  # entity -> mapped columns a header lacks
    rows_read: dict[str, int] = field(default_factory=dict)
    quarantine: dict[str, dict[str, int]] = field(default_factory=dict)  # entity -> reason -> rows
    columns: list[ColumnProfile] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def verdict(self) -> str:
        return FAIL if self.problems else PASS

    def render(self) -> str:
        lines = [f"== validate-source {self.hospital_id}: {self.verdict.upper()}"]
        for entity, files in sorted(self.files.items()):
            bad = sum(self.quarantine.get(entity, {}).values())
            lines.append(f"   {entity:<15} files={len(files):<4} rows={self.rows_read.get(entity, 0):<9} "
                         f"would quarantine={bad}")
            for reason, n in sorted(self.quarantine.get(entity, {}).items()):
                lines.append(f"      {n:>7}  {reason}")
            if self.unmapped.get(entity):
                lines.append(f"      unmapped columns (kept in _extra): {self.unmapped[entity]}")
            if self.missing.get(entity):
                lines.append(f"      MISSING mapped columns: {self.missing[entity]}")
        lines += [f"   unmatched file: {f}" for f in self.unmatched]
        lines += [f"   UNREADABLE {f}: {reason}" for f, reason in sorted(self.unreadable.items())]
        lines.append("   columns (share empty / share not parsing as its kind):")
        for c in self.columns:
            lines.append(f"      {c.entity + '.' + c.column:<32} {c.kind:<6} {c.source[:40]:<40} "
                         f"empty {c.empty / c.values if c.values else 0:6.1%}  unparsed {c.unparsed_share:6.1%}")
        lines += [f"   PROBLEM: {p}" for p in self.problems]
        return "\n".join(lines)


def kind_of(column: str) -> str:
    if column in TIME_COLUMNS:
        return "time"
    if column in DATE_COLUMNS:
        return "date"
    if column in NUMBER_COLUMNS:
        return "number"
    return "text"


def parses(value: Column, kind: str, source: EntitySource) -> Column:
    """Whether a non-empty value reads as its kind with the contract's formats."""
    if kind == "time":
        return parse_time(value, source.timestamp_format).isNotNull()
    if kind == "date":
        return parse_time(value, source.date_format).isNotNull()
    if kind == "number":
        return value.try_cast("double").isNotNull()
    return F.lit(True)


def profile_source(spark: SparkSession, settings: Settings, hospital_id: str, landing: str,
                   max_unparsed: float = 0.05) -> SourceProfile:
    contract = settings.sources[hospital_id]
    folder = f"{landing.rstrip('/')}/{hospital_id}"
    report = SourceProfile(hospital_id)
    files = []
    for path, size, modified_ms in list_files(spark, folder):
        hospital, entities, reason = match_contract(settings, landing, path)
        if not entities:
            report.unmatched.append(path)
        elif size == 0:
            report.unreadable[path] = "empty file (0 bytes)"
        else:
            files.append(LandingFile(path, size, modified_ms, "", hospital, entities))
            for entity in entities:
                report.files.setdefault(entity, []).append(path)
    groups, unreadable = groups_of(spark, settings, files)
    report.unreadable.update({f.path: reason for f, reason in unreadable})
    for g in groups:
        if g.fmt == "csv":
            source = contract.entities[g.entities[0]]
            header = g.header.split(source.delimiter)  # read once when the files were grouped
            sent = set(source.sent().values())
            report.unmapped.setdefault(g.entities[0], [])
            report.unmapped[g.entities[0]] += [c for c in header if c not in sent
                                               and c not in report.unmapped[g.entities[0]]]
            report.missing.setdefault(g.entities[0], [])
            report.missing[g.entities[0]] += [c for c in sorted(sent - set(header))
                                              if c not in report.missing[g.entities[0]]]
    progress.step("list", f"{hospital_id}: {len(files)} files to profile, {len(report.unmatched)} unmatched")
    entities = sorted({e for g in groups for e in g.entities})
    for done, entity in enumerate(entities, start=1):
        parsed, failed = parse_entity(spark, settings, entity, [g for g in groups if entity in g.entities])
        report.unreadable.update({f.path: reason for f, reason in failed})
        for p in parsed:
            try:
                _profile_entity(report, p.frame, entity, contract.entities[entity])
            finally:
                p.frame.unpersist()
        progress.step("profile", entity, done, len(entities), "entities", sum(report.rows_read.values()))
    _judge(report, contract.quarantine_threshold, max_unparsed)
    return report


def _profile_entity(report: SourceProfile, frame, entity: str, source: EntitySource) -> None:
    """One aggregation over the parsed records: counts by quarantine reason and per column."""
    good = F.col("_error").isNull()
    aggregates = [F.count("*").alias("rows")]
    sent = source.sent()
    for i, column in enumerate(sent):
        value = clean_text(F.col(column))
        aggregates += [F.sum((good & value.isNull()).cast("int")).alias(f"e{i}"),
                       F.sum((good & value.isNotNull() & ~parses(value, kind_of(column), source)).cast("int"))
                       .alias(f"u{i}"), F.sum(good.cast("int")).alias(f"n{i}")]
    totals = frame.agg(*aggregates).first()
    report.rows_read[entity] = report.rows_read.get(entity, 0) + totals.rows
    for row in frame.where(~good).groupBy("_error").count().collect():  # one row per reason
        reasons = report.quarantine.setdefault(entity, {})
        reasons[row["_error"]] = reasons.get(row["_error"], 0) + row["count"]
    for i, (column, where) in enumerate(sent.items()):
        report.columns.append(ColumnProfile(entity, column, where, kind_of(column), totals[f"n{i}"] or 0,
                                            totals[f"e{i}"] or 0, totals[f"u{i}"] or 0))


def _judge(report: SourceProfile, threshold: float, max_unparsed: float) -> None:
    if not report.files:
        report.problems.append("no file matches any entity pattern of the contract")
    for path, reason in sorted(report.unreadable.items()):
        report.problems.append(f"cannot read {path}: {reason}")
    for entity, columns in sorted(report.missing.items()):
        if columns:
            report.problems.append(f"{entity}: mapped columns missing from the header: {columns}")
    read = sum(report.rows_read.values())
    bad = sum(sum(r.values()) for r in report.quarantine.values())
    if read and bad / read > threshold:
        report.problems.append(f"{bad}/{read} records would be quarantined ({bad / read:.2%} > {threshold:.2%})")
    for c in report.columns:
        if c.unparsed_share > max_unparsed:
            report.problems.append(f"{c.entity}.{c.column}: {c.unparsed_share:.1%} of values do not parse as "
                                   f"{c.kind} ({c.source})")
