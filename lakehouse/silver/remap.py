"""A new version of a code-mapping vocabulary re-maps only the silver rows whose codes it changed.

Every refine records the code mappings it applied in `ops.refine_vocab`. The next refine compares them with
conf/vocab/: the entries added, removed or changed name the codes whose mapping moved, and the silver records
holding one of those codes are refined again from bronze (every version of each, so the latest still wins)
beside the new batches. Every other row keeps what it has, its `vocab_version` included: the version that
mapped it maps it the same way as the new one.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import reduce
from pathlib import Path

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from lakehouse import io
from lakehouse.catalog import REFINE_VOCAB
from lakehouse.config import CODE_MAPPINGS
from lakehouse.silver import vocab
from lakehouse.silver.standardize import RECORD_KEY, normalize_icd9cm3, record_key

Entries = frozenset[tuple[str, ...]]
Mappings = dict[str, Entries]  # vocabulary -> its entries


def current(vocab_dir: Path) -> Mappings:
    return {name: frozenset(vocab.entries(vocab_dir, name)) for name in CODE_MAPPINGS}


def applied(spark: SparkSession, root: str) -> Mappings | None:
    """The mappings silver was last refined with; None when no refine recorded them (a full pass is due)."""
    if not io.exists(spark, REFINE_VOCAB, root):
        return None
    found: dict[str, set[tuple[str, ...]]] = {name: set() for name in CODE_MAPPINGS}
    for row in io.read(spark, REFINE_VOCAB, root).collect():  # the vocabularies' size, not the region's
        found.setdefault(row.vocabulary, set()).add(tuple(row.entry))
    return {name: frozenset(entries) for name, entries in found.items()}


def changed(before: Mappings, now: Mappings) -> Mappings:
    """Per vocabulary, the entries one side has and the other lacks (an entry whose target changed is on both
    sides: its old and its new form); vocabularies without a change are left out."""
    diff = {name: before.get(name, frozenset()) ^ now.get(name, frozenset()) for name in {*before, *now}}
    return {name: entries for name, entries in diff.items() if entries}


def snapshot(spark: SparkSession, mappings: Mappings, version: str, run_id: str) -> DataFrame:
    rows = [(name, list(entry), version, run_id) for name in sorted(mappings) for entry in sorted(mappings[name])]
    return spark.createDataFrame(rows, REFINE_VOCAB.schema)


def _holding(table: DataFrame, entries: Entries, columns: list[Column]) -> DataFrame:
    """Rows of `table` whose `columns` equal the leading values of one of `entries` (broadcast: a vocabulary's
    change is small)."""
    keys = sorted({entry[:len(columns)] for entry in entries})
    wanted = table.sparkSession.createDataFrame(keys, ", ".join(f"_k{i} STRING" for i in range(len(columns))))
    return table.join(F.broadcast(wanted), [c == wanted[f"_k{i}"] for i, c in enumerate(columns)], "left_semi")


def _local_code(t: DataFrame, entries: Entries) -> DataFrame:
    return _holding(t, entries, [t.hospital_id, t.source_code])  # (hospital_id, local_code, ...)


def _unit(t: DataFrame, entries: Entries) -> DataFrame:
    return _holding(t, entries, [t.loinc_code, t.source_unit])  # (loinc_code, source_unit, canonical_unit, factor)


def _icd10(t: DataFrame, entries: Entries) -> DataFrame:
    """A diagnosis whose code's entry changed or, sent without a code, one whose name's entry did."""
    by_name = _holding(t.where(t.source_code.isNull()), frozenset((name,) for _, name in entries), [t.source_name])
    return _holding(t, entries, [t.icd10_code]).unionByName(by_name)


def _icd9cm3(t: DataFrame, entries: Entries) -> DataFrame:
    return _holding(t, entries, [normalize_icd9cm3(t.source_code)])  # unmapped rows keep no code: normalize again


# silver table -> (vocabulary, the table's rows a change of its entries affects)
AFFECTED_BY: dict[str, tuple[tuple[str, Callable[[DataFrame, Entries], DataFrame]], ...]] = {
    "lab_result": (("lab_codes", _local_code), ("units", _unit)),
    "vital_sign": (("vital_codes", _local_code), ("units", _unit)),
    "medication": (("drug_codes", _local_code),),
    "diagnosis": (("icd10", _icd10),),
    "procedure": (("icd9cm3", _icd9cm3),),
}


def affected(silver: dict[str, DataFrame], changes: Mappings) -> dict[str, DataFrame]:
    """Per silver table a change touches: (`_hospital_id`, record key) of its records holding a changed code, as
    bronze keys them (`refine.Batches` selects their rows)."""
    found = {}
    for table, rules in AFFECTED_BY.items():
        frames = [rows(silver[table], changes[name]) for name, rows in rules if name in changes]
        if frames:
            holding = reduce(DataFrame.unionByName, frames)
            found[table] = holding.select(
                F.col("hospital_id").alias("_hospital_id"),
                F.col("source_id"), F.col("source_file").alias("_source_file"),
                F.col("source_line").alias("_source_line"),
            ).select("_hospital_id", record_key("source_id").alias(RECORD_KEY)).distinct()
    return found
