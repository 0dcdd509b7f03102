"""The PII scanner: does any string in silver or gold still carry a direct identifier?

Every string column of every silver and gold table (pseudonymous keys and lineage aside) is searched for
national ID numbers (with a valid check character and birth date), mobile phone numbers, and the names
held in the vault: a value equal to a registered name, or, for text, any two to four character run of it.
One pass per table on the executors; only the per-column counts and one masked sample reach the driver.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import reduce

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from lakehouse import io, progress
from lakehouse.catalog import IDENTITY, TableRef
from lakehouse.silver import vault
from lakehouse.silver.standardize import ID_NUMBER, PHONE, national_id_is_valid

SKIPPED = ("batch_id", "source_file", "run_id", "vocab_version", "config_hash")  # lineage, never identifiers
NGRAMS = (2, 3, 4)
HASH = "^[0-9a-f]{64}$"  # a pseudonym (keyed hash): digits in it are no phone number


@dataclass(frozen=True)
class Hit:
    table: str
    column: str
    kind: str
    rows: int
    sample: str

    def line(self) -> str:
        return f"{self.table}.{self.column}: {self.rows} rows with a {self.kind} (e.g. {self.sample})"


def scanned_columns(df: DataFrame) -> list[str]:
    return [f.name for f in df.schema.fields if f.dataType.simpleString() == "string"
            and not f.name.endswith("_key") and f.name not in SKIPPED]


def masked(value: Column) -> Column:
    """Enough of a hit to find it, not enough to read it: its first and last character."""
    return F.concat(F.substring(value, 1, 1), F.repeat(F.lit("*"), F.greatest(F.length(value) - 2, F.lit(1))),
                    F.substring(value, -1, 1))


def values(spark: SparkSession, root: str, refs: list[TableRef]) -> DataFrame:
    """(table, column, value, _row) for every non-empty scanned string; `_row` tells cells apart."""
    frames = []
    for ref in refs:
        df = io.read(spark, ref, root)
        columns = scanned_columns(df)
        if columns:
            cells = F.explode(F.array(*[F.struct(F.lit(c).alias("column"), F.col(c).alias("value")) for c in columns]))
            frames.append(df.select(cells.alias("cell"))
                          .select(F.lit(ref.qualified).alias("table"), "cell.column", "cell.value")
                          .where((F.length("value") > 0) & ~F.col("value").rlike(HASH)))
    cells = reduce(DataFrame.unionByName, frames) if frames else spark.createDataFrame(
        [], "table STRING, column STRING, value STRING")
    return cells.withColumn("_row", F.monotonically_increasing_id())


def _pattern_hits(cells: DataFrame, kind: str, pattern: str, valid=None) -> DataFrame:
    found = cells.select("table", "column", "_row",
                         F.explode(F.regexp_extract_all("value", F.lit(pattern), 0)).alias("hit"))
    if valid is not None:
        found = found.where(valid(F.col("hit")))
    return found.select("table", "column", F.lit(kind).alias("kind"), "hit", "_row")


def _name_hits(cells: DataFrame, names: DataFrame) -> DataFrame:
    """Values equal to a registered name, or (text with Han characters) containing one."""
    grams = F.flatten(F.array(*[
        F.transform(F.sequence(F.lit(1), F.greatest(F.length("value") - n + 1, F.lit(1))),
                    lambda i, n=n: F.substring(F.col("value"), i, n)) for n in NGRAMS]))
    candidates = F.when(F.col("value").rlike(r"\p{IsHan}") & (F.length("value") > 2),
                        F.array_union(F.array(F.trim("value")), grams)).otherwise(F.array(F.trim("value")))
    exploded = cells.select("table", "column", "_row", F.explode(candidates).alias("hit"))
    return exploded.join(names, exploded.hit == names.name, "left_semi").select(
        "table", "column", F.lit("name").alias("kind"), "hit", "_row")


def scan(spark: SparkSession, root: str, vault_key: bytes, refs: list[TableRef] | None = None) -> list[Hit]:
    """Every hit, grouped by table, column and kind (silver and gold, all tables found under the root)."""
    refs = refs if refs is not None else [r for r in io.register_all(spark, root) if r.layer in ("silver", "gold")]
    cells = values(spark, root, refs).cache()
    progress.step("scan", f"national ids, phones and the vault's names in the string cells of {len(refs)} tables")
    try:
        hits = (_pattern_hits(cells, "national_id", ID_NUMBER, national_id_is_valid)
                .unionByName(_pattern_hits(cells, "phone", PHONE)))
        if io.exists(spark, IDENTITY, root):
            names = (vault.plaintext(spark, root, vault_key).select(F.trim("name").alias("name"))
                     .where(F.length("name") >= 2).distinct())
            hits = hits.unionByName(_name_hits(cells, names))
        rows = (hits.groupBy("table", "column", "kind")
                .agg(F.countDistinct("_row").alias("rows"), F.first(masked(F.col("hit"))).alias("sample"))
                .orderBy("table", "column", "kind").collect())  # one row per column and kind with hits
    finally:
        cells.unpersist()
    return [Hit(r.table, r.column, r.kind, r.rows, r.sample) for r in rows]
