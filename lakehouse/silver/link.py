"""The regional person index (EMPI): which hospital patient records are one person.

Deterministic first (equal valid national IDs), then Fellegi-Sunter-style evidence over blocked pairs
(conf/linkage.yaml: blocking rules, a weight per comparison level, a threshold), then connected
components. Everything is built-in Spark on DataFrames: nothing that grows with the region reaches the
driver. Person ids are stable: a component keeps the id most of its records had, a new record joins its
person's id, and every change (created, joined, merged, split, moved) is written to silver.person_event.

Identifiers are read from the vault and decrypted inside the job; they are never written in plaintext.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import reduce

from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from lakehouse import io
from lakehouse.catalog import IDENTITY, PERSON, PERSON_EVENT, PERSON_LINK, SILVER
from lakehouse.config import LINK_LEVELS, Linkage, Settings
from lakehouse.io import Written
from lakehouse.runlog import commit_note
from lakehouse.silver import vault, vocab
from lakehouse.silver.refine import person_key
from lakehouse.silver.standardize import national_id_is_valid

MISSING = "missing"
NO_IDENTIFIER = "no_usable_identifier"
MAX_ITERATIONS = 30  # label propagation rounds; a component's diameter is far smaller


# --- features: one row per record, identifiers normalised for comparison -----------------------------------

def name_pinyin(plain: DataFrame, pinyin: DataFrame) -> DataFrame:
    """patient_key -> (name_pinyin, name_alt, surname): characters read as toneless pinyin (the first one
    with its surname reading), Latin letters kept; `name_alt` is the pinyin with the two given-name
    characters swapped (a three-character name typed in the wrong order)."""
    chars = plain.select("patient_key", F.posexplode(F.split(F.col("name"), "")).alias("pos", "ch"))
    read = chars.join(F.broadcast(pinyin), chars.ch == pinyin.character, "left")
    syllable = F.when(F.col("pos") == 0, F.col("surname_pinyin")).otherwise(F.col("pinyin"))
    piece = (F.when(syllable.isNotNull(), F.concat(F.lit(" "), syllable, F.lit(" ")))  # a character: one token
             .when(F.upper("ch").rlike("^[A-Z]$"), F.upper("ch"))
             .otherwise(F.lit(" ")))  # spaces, dots, anything else separates
    joined = (read.groupBy("patient_key")
              .agg(F.array_join(F.transform(F.sort_array(F.collect_list(F.struct("pos", piece.alias("p")))),
                                            lambda s: s["p"]), "").alias("_spelled"),
                   F.min(F.when(F.col("pinyin").isNull(), F.col("pos"))).alias("_first_latin")))
    tokens = F.split(F.trim(F.regexp_replace("_spelled", " +", " ")), " ")
    han_only = F.col("_first_latin").isNull() & (F.size(tokens) == 3)
    return joined.select(
        "patient_key",
        F.nullif(F.array_join(tokens, ""), F.lit("")).alias("name_pinyin"),
        F.when(han_only, F.concat(tokens[0], tokens[2], tokens[1])).alias("name_alt"),
        F.nullif(tokens[0], F.lit("")).alias("surname"))


def features(plain: DataFrame, persons: DataFrame, pinyin: DataFrame) -> DataFrame:
    """The vault's plaintext (vault.plaintext) and silver.person's sex -> one comparable row per record."""
    name = F.nullif(F.regexp_replace(F.upper(F.col("name")), r"\s+", " "), F.lit(""))
    clean = plain.select("patient_key", "hospital_id", F.trim(name).alias("name"),
                         F.nullif(F.col("national_id"), F.lit("")).alias("national_id"),
                         F.to_date("birth_date").alias("birth_date"), "phone",
                         F.nullif(F.regexp_replace("address", r"\s+", ""), F.lit("")).alias("address"))
    sex = persons.select("patient_key", F.when(F.col("sex").isin("male", "female"), F.col("sex")).alias("sex"))
    return (clean.join(name_pinyin(clean.where(F.col("name").isNotNull()), pinyin), "patient_key", "left")
            .join(sex, "patient_key", "left")
            .withColumn("id_valid", F.coalesce(national_id_is_valid(F.col("national_id")), F.lit(False)))
            .withColumn("birth_year", F.year("birth_date")))


def usable() -> Column:
    """A record that can be matched at all: some identifier besides sex."""
    return reduce(lambda a, b: a | b, [F.col(c).isNotNull() for c in ("national_id", "name_pinyin", "birth_date",
                                                                       "phone")])


# --- blocking and comparison --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Candidates:
    pairs: DataFrame  # left, right (left < right)
    oversized: DataFrame  # rule, block, records: blocks skipped as placeholders


def candidate_pairs(feats: DataFrame, linkage: Linkage) -> Candidates:
    """Pairs of records that share every field of at least one blocking rule (each pair once)."""
    keyed = reduce(DataFrame.unionByName, [
        feats.where(reduce(lambda a, b: a & b, [F.col(c).isNotNull() for c in rule]))
        .select("patient_key", F.lit(i).alias("rule"),
                F.concat_ws("|", *[F.col(c).cast("string") for c in rule]).alias("block"))
        for i, rule in enumerate(linkage.blocking)])
    sized = keyed.withColumn("records", F.count(F.lit(1)).over(Window.partitionBy("rule", "block")))
    small = sized.where(F.col("records") <= linkage.max_block_size).drop("records")
    a, b = small.alias("a"), small.alias("b")
    pairs = (a.join(b, (F.col("a.rule") == F.col("b.rule")) & (F.col("a.block") == F.col("b.block"))
                    & (F.col("a.patient_key") < F.col("b.patient_key")))
             .select(F.col("a.patient_key").alias("left"), F.col("b.patient_key").alias("right")).distinct())
    oversized = (sized.where(F.col("records") > linkage.max_block_size)
                 .select("rule", "block", "records").distinct())
    return Candidates(pairs, oversized)


def levels(l: str = "l", r: str = "r") -> dict[str, Column]:  # noqa: E741
    """Each comparison's level for a pair with the two records' features prefixed `l.` and `r.`."""
    def c(side: str, name: str) -> Column:
        return F.col(f"{side}.{name}")

    def either_missing(name: str) -> Column:
        return c(l, name).isNull() | c(r, name).isNull()

    def swapped() -> Column:
        return ((F.year(c(l, "birth_date")) == F.year(c(r, "birth_date")))
                & (F.month(c(l, "birth_date")) == F.dayofmonth(c(r, "birth_date")))
                & (F.dayofmonth(c(l, "birth_date")) == F.month(c(r, "birth_date"))))

    return {
        "national_id": (F.when(either_missing("national_id"), MISSING)
                        .when(c(l, "id_valid") & c(r, "id_valid") & (c(l, "national_id") == c(r, "national_id")),
                              "equal")
                        .when(c(l, "id_valid") & c(r, "id_valid"), "conflict")
                        .when(F.levenshtein(c(l, "national_id"), c(r, "national_id")) <= 1, "near")
                        .otherwise("differ")),
        "name": (F.when(either_missing("name_pinyin"), MISSING)
                 .when(c(l, "name") == c(r, "name"), "exact")
                 .when(c(l, "name_pinyin") == c(r, "name_pinyin"), "same_sound")
                 .when((c(l, "name_alt") == c(r, "name_pinyin")) | (c(r, "name_alt") == c(l, "name_pinyin")),
                       "transposed")
                 .when(F.levenshtein(c(l, "name_pinyin"), c(r, "name_pinyin")) <= 2, "similar")
                 .when(c(l, "surname") == c(r, "surname"), "surname_only")
                 .otherwise("differ")),
        "birth_date": (F.when(either_missing("birth_date"), MISSING)
                       .when(c(l, "birth_date") == c(r, "birth_date"), "exact")
                       .when(swapped(), "day_month_swapped")
                       .when(F.year(c(l, "birth_date")) == F.year(c(r, "birth_date")), "same_year")
                       .otherwise("differ")),
        "sex": F.when(either_missing("sex"), MISSING).when(c(l, "sex") == c(r, "sex"), "agree").otherwise("disagree"),
        "phone": F.when(either_missing("phone"), MISSING).when(c(l, "phone") == c(r, "phone"), "exact")
                  .otherwise("differ"),
        "address": F.when(either_missing("address"), MISSING).when(c(l, "address") == c(r, "address"), "exact")
                    .otherwise("differ"),
    }


def weight(comparison: str, level: Column, linkage: Linkage) -> Column:
    """The level's weight from conf/linkage.yaml; a missing value weighs 0."""
    table = F.create_map(*[F.lit(x) for name, w in linkage.weights[comparison].items() for x in (name, float(w))])
    return F.coalesce(F.element_at(table, level), F.lit(0.0))


def scored(pairs: DataFrame, feats: DataFrame, linkage: Linkage) -> DataFrame:
    """left, right, score, levels (comparison -> level), agreed (the comparisons that weighed for) and rule:
    national_id (equal valid IDs), score (at or above the threshold) or null (not linked)."""
    left, right = feats.alias("l"), feats.alias("r")
    compared = (pairs.join(left, F.col("left") == F.col("l.patient_key"))
                .join(right, F.col("right") == F.col("r.patient_key"))
                .select("left", "right", *[level.alias(name) for name, level in levels().items()]))
    weights = {name: weight(name, F.col(name), linkage) for name in LINK_LEVELS}
    score = reduce(lambda a, b: a + b, weights.values())
    agreed = F.array_compact(F.array(*[F.when(w > 0, F.lit(name)) for name, w in weights.items()]))
    rule = F.when(F.col("national_id") == "equal", "national_id").when(score >= linkage.threshold, "score")
    return compared.select("left", "right", score.alias("score"),
                           F.map_from_arrays(F.array(*[F.lit(n) for n in LINK_LEVELS]),
                                             F.array(*[F.col(n) for n in LINK_LEVELS])).alias("levels"),
                           agreed.alias("agreed"), rule.alias("rule"))


# --- clustering and stable ids --------------------------------------------------------------------------------

def components(edges: DataFrame) -> DataFrame:
    """patient_key -> component (the smallest patient_key it is connected to), for records with an edge.
    Label propagation: every round each record takes the smallest label among itself and its neighbours."""
    both = edges.select("left", "right").unionByName(edges.select(F.col("right").alias("left"),
                                                                  F.col("left").alias("right")))
    labels = both.groupBy(F.col("left").alias("patient_key")).agg(
        F.least(F.first("left"), F.min("right")).alias("component")).localCheckpoint()
    for _ in range(MAX_ITERATIONS):
        proposed = (both.join(labels.select(F.col("patient_key").alias("right"), F.col("component").alias("near")),
                              "right")
                    .groupBy(F.col("left").alias("patient_key")).agg(F.min("near").alias("near")))
        updated = (labels.join(proposed, "patient_key")
                   .select("patient_key", F.least("component", "near").alias("component"),
                           (F.col("near") < F.col("component")).alias("_changed"))
                   .localCheckpoint())
        labels = updated.drop("_changed")
        if not updated.where("_changed").limit(1).count():
            return labels
    raise RuntimeError(f"person linkage did not converge in {MAX_ITERATIONS} rounds")


def assign_ids(membership: DataFrame, previous: DataFrame, run_id: str) -> DataFrame:
    """membership (patient_key, component), previous (patient_key, person_id) -> patient_key, person_id,
    previous_id. A component keeps the previous id most of its records had (ties: the smallest id); an id
    claimed by two components stays with the larger part, and the other part becomes a new person."""
    known = membership.join(previous.select("patient_key", F.col("person_id").alias("previous_id")),
                            "patient_key", "left")
    claims = (known.where(F.col("previous_id").isNotNull()).groupBy("component", "previous_id")
              .agg(F.count(F.lit(1)).alias("n")))
    best = (claims.withColumn("_r", F.row_number().over(
        Window.partitionBy("component").orderBy(F.col("n").desc(), "previous_id"))).where("_r = 1"))
    kept = (best.withColumn("_r", F.row_number().over(
        Window.partitionBy("previous_id").orderBy(F.col("n").desc(), "component"))).where("_r = 1")
            .select("component", F.col("previous_id").alias("kept_id")))
    taken = previous.select(F.col("person_id").alias("_taken")).distinct()
    components_ = (membership.select("component").distinct().join(kept, "component", "left")
                   .join(taken, F.col("component") == F.col("_taken"), "left"))
    fresh = F.when(F.col("_taken").isNull(), F.col("component")).otherwise(
        F.sha2(F.concat_ws("|", F.lit("person"), F.col("component"), F.lit(run_id)), 256))
    ids = components_.select("component", F.coalesce("kept_id", fresh).alias("person_id"))
    return known.join(ids, "component").select("patient_key", "person_id", "previous_id")


def events(assigned: DataFrame, run_id: str) -> DataFrame:
    """One row per record whose person is new or changed: created (a new person), joined (a new record
    joined a known person), merged (its person was absorbed), split (it left to form a new person), moved."""
    before = assigned.select(F.col("previous_id").alias("_id")).where(F.col("_id").isNotNull()).distinct()
    after = assigned.select(F.col("person_id").alias("_now")).distinct()
    changed = (assigned.where(~F.col("previous_id").eqNullSafe(F.col("person_id")))
               .join(before.withColumn("_was_known", F.lit(True)), F.col("person_id") == F.col("_id"), "left")
               .join(after.withColumn("_survives", F.lit(True)), F.col("previous_id") == F.col("_now"), "left"))
    event = (F.when(F.col("previous_id").isNull() & F.col("_was_known").isNull(), "created")
             .when(F.col("previous_id").isNull(), "joined")
             .when(F.col("_survives").isNull(), "merged")
             .when(F.col("_was_known").isNull(), "split")
             .otherwise("moved"))
    return changed.select(F.lit(run_id).alias("run_id"), event.alias("event"), "person_id",
                          F.col("previous_id").alias("other_person_id"), "patient_key",
                          F.current_timestamp().alias("at"))


def link_rows(feats: DataFrame, scored_: DataFrame, assigned: DataFrame, key: bytes, run_id: str) -> DataFrame:
    """silver.person_link: every record, its person and its strongest evidence."""
    linked = scored_.where(F.col("rule").isNotNull())
    both = linked.select("left", "right", "score", "agreed", "rule").unionByName(
        linked.select(F.col("right").alias("left"), F.col("left").alias("right"), "score", "agreed", "rule"))
    strongest = (both.withColumn("_r", F.row_number().over(Window.partitionBy("left").orderBy(
        (F.col("rule") == "national_id").desc(), F.col("score").desc(), "right"))).where("_r = 1")
        .select(F.col("left").alias("patient_key"), "rule", "score", F.col("right").alias("matched_patient_key"),
                "agreed"))
    flags = F.when(~usable(), F.array(F.lit(NO_IDENTIFIER))).otherwise(F.array().cast("array<string>"))
    return (feats.select("patient_key", "hospital_id", flags.alias("flags"))
            .join(assigned.select("patient_key", "person_id"), "patient_key")
            .join(strongest, "patient_key", "left")
            .select("patient_key", "hospital_id", "person_id", person_key(key, F.col("person_id")).alias("person_key"),
                    F.coalesce("rule", F.lit("single")).alias("rule"), "score", "matched_patient_key",
                    F.coalesce("agreed", F.array().cast("array<string>")).alias("agreed"), "flags",
                    F.lit(run_id).alias("run_id"), F.current_timestamp().alias("linked_at")))


# --- the job ---------------------------------------------------------------------------------------------------

OUTPUTS = (PERSON_LINK, PERSON_EVENT)


def link_inputs(spark: SparkSession, settings: Settings) -> list[Written]:
    """The vault: refine changes it whenever it changes a person (silver.person is written by link itself, so
    its version is no input: the run after a link that moved keys would never be skipped)."""
    return [io.describe(spark, IDENTITY, settings.root)] if io.exists(spark, IDENTITY, settings.root) else []


@dataclass
class LinkResult:
    written: list[Written]
    records: int
    persons: int
    pairs: int
    links: int
    oversized_blocks: int
    changed_keys: int

    def summary(self) -> str:
        return (f"{self.records} records -> {self.persons} persons; {self.pairs} candidate pairs, {self.links} "
                f"links; {self.oversized_blocks} oversized blocks skipped; person_key changed on "
                f"{self.changed_keys} records")


def link(spark: SparkSession, settings: Settings, key: bytes, vault_key: bytes, run_id: str = "link") -> LinkResult:
    """Link every record in the vault; write silver.person_link and person_event; carry changed person_keys
    into silver.person and every silver event table."""
    root, linkage = settings.root, settings.linkage
    vault.check_key(spark, root, vault_key, settings.main.secrets.vault_key_env)  # before anything is written
    if not io.exists(spark, IDENTITY, root):
        return LinkResult([], 0, 0, 0, 0, 0, 0)
    persons = io.read(spark, PERSON, root)
    feats = features(vault.plaintext(spark, root, vault_key), persons,
                     vocab.load(spark, settings.vocab_dir, "pinyin")).persist()
    try:
        candidates = candidate_pairs(feats, linkage)
        pairs = scored(candidates.pairs, feats, linkage).persist()
        membership = (components(pairs.where(F.col("rule").isNotNull()))
                      .unionByName(feats.select("patient_key", F.col("patient_key").alias("component")))
                      .groupBy("patient_key").agg(F.min("component").alias("component")))
        previous = io.read_or_empty(spark, PERSON_LINK, root).select("patient_key", "person_id")
        assigned = assign_ids(membership, previous, run_id).localCheckpoint()
        rows = link_rows(feats, pairs, assigned, key, run_id)
        with commit_note(spark, run_id, "link"):
            written = [io.overwrite(spark, rows, PERSON_LINK, root),
                       io.append(spark, events(assigned, run_id), PERSON_EVENT, root)]
            changed, updated = update_person_keys(spark, root)
            written += updated
            stats = pairs.agg(F.count(F.lit(1)).alias("pairs"), F.count("rule").alias("links")).first()
            result = LinkResult(written, feats.count(), assigned.select("person_id").distinct().count(),
                                stats.pairs, stats.links, candidates.oversized.count(), changed)
            pairs.unpersist()
            return result
    finally:
        feats.unpersist()


def update_person_keys(spark: SparkSession, root: str) -> tuple[int, list[Written]]:
    """Set person_key from silver.person_link wherever it differs: silver.person, then every event table
    (by patient_key). Returns the number of records whose key changed and the tables updated."""
    links = io.read(spark, PERSON_LINK, root).select("patient_key", "person_key")
    current = io.read(spark, PERSON, root).select("patient_key", F.col("person_key").alias("_old"))
    changed = (links.join(current, "patient_key").where(~F.col("person_key").eqNullSafe(F.col("_old")))
               .drop("_old").localCheckpoint())
    count = changed.count()
    if not count:
        return 0, []
    return count, [io.update_by(spark, changed, ref, root, on=("patient_key",), columns=("person_key",))
                   for ref in SILVER.values() if io.exists(spark, ref, root) and "patient_key" in ref.columns]
