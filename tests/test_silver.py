"""Silver on the shared tiny region, checked against the generator's ground truth.

Silver rows are traced back to their bronze rows by lineage (source file and line), which gives each
its source record id; the truth tables say what each record really was.
"""

from __future__ import annotations

import shutil
from functools import reduce

import pandas as pd
from chispa import assert_df_equality
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from lakehouse import io, secrets
from lakehouse.bronze.ingest import ingest
from lakehouse.catalog import BRONZE, DQ_RESULT, QUARANTINE, REFINE_STATE, SILVER
from lakehouse.cli import main
from lakehouse.config import load_settings
from lakehouse.silver.link import link
from lakehouse.silver.refine import refine
from lakehouse.synth.defects import VALUE_DEFECTS
from lakehouse.synth.dialects import ID_FIELDS
from lakehouse.synth.generator import read_truth


def _traced(spark, region, entity: str, *columns: str) -> pd.DataFrame:
    """Silver rows of an entity with their bronze record id (`record_id`), as pandas (a tiny region)."""
    root = region.settings.root
    silver = io.read(spark, SILVER[entity], root)
    bronze = io.read(spark, BRONZE[entity], root).select(
        F.col("_source_file").alias("source_file"), F.col("_source_line").alias("source_line"),
        F.col(ID_FIELDS[entity]).alias("record_id"), F.lit(True).alias("in_bronze"))
    return silver.join(bronze, ["source_file", "source_line"], "left").select(
        "hospital_id", "record_id", "in_bronze", *columns).toPandas()


def _keys(frame: pd.DataFrame) -> list[tuple[str, str]]:
    return list(frame[["hospital_id", "record_id"]].itertuples(index=False, name=None))


def _clean(region, entity: str, frame: pd.DataFrame) -> pd.DataFrame:
    """The rows of records the generator planted no defect in."""
    defects = read_truth(region.truth, "defects")
    planted = set(_keys(defects[defects["entity"] == entity]))
    return frame[[k not in planted for k in _keys(frame)]]


def test_every_silver_row_traces_to_one_bronze_row_and_no_key_is_twice(spark, region):
    for entity, ref in SILVER.items():
        if entity == "person":
            continue
        rows = _traced(spark, region, entity, ref.keys[0])
        assert len(rows) > 0, entity
        assert rows["in_bronze"].notna().all(), f"{entity}: a silver row without its bronze row"
        with_id = rows[rows["record_id"].fillna("") != ""]  # records sent without an id are kept apart
        assert not with_id.duplicated(["hospital_id", "record_id"]).any(), f"{entity}: a record twice"
        assert rows[ref.keys[0]].is_unique, entity


def test_day_two_corrections_replace_and_cancellations_remove_the_record(spark, region):
    resends = read_truth(region.truth, "resends")
    kinds = set(resends[["entity", "kind"]].itertuples(index=False, name=None))
    # precondition: the region really holds a corrected lab, a cancelled lab and cancelled diagnoses
    assert {("lab_result", "corrected"), ("lab_result", "cancelled"), ("diagnosis", "cancelled")} <= kinds
    assert (read_truth(region.truth, "defects")["kind"] == "exact_duplicate").any()
    for entity in ("lab_result", "diagnosis", "encounter", "medication"):
        mine = resends[resends["entity"] == entity]
        mine = _clean(region, entity, mine)
        value_column = {"lab_result": "source_value", "encounter": "department", "medication": "source_dose"}
        silver = _traced(spark, region, entity, *([value_column[entity]] if entity in value_column else []))
        present = set(_keys(silver))
        cancelled = mine[mine["kind"] == "cancelled"]
        gone = set(_keys(cancelled))
        assert not gone & present, f"{entity}: cancelled records still in silver"
        corrected = mine[mine["kind"] == "corrected"].merge(silver, on=["hospital_id", "record_id"])
        if entity in value_column:
            assert len(corrected) > 0, entity
            got = corrected[value_column[entity]].astype(float if entity != "encounter" else str)
            want = corrected["new_value"].astype(float if entity != "encounter" else str)
            assert (got == want).all(), f"{entity}: the correction did not replace the value"


def test_labs_and_vitals_equal_their_true_values_after_unit_conversion(spark, region):
    labs = _traced(spark, region, "lab_result", "loinc_code", "value", "unit", "source_value")
    truth = read_truth(region.truth, "lab_values")[["hospital_id", "result_id", "loinc_code", "unit", "value"]]
    checked = labs.merge(truth.rename(columns={"result_id": "record_id"}), on=["hospital_id", "record_id"],
                         suffixes=("", "_true"))
    checked = _clean(region, "lab_result", checked)
    assert len(checked) > 0.9 * len(labs)
    assert (checked["loinc_code"] == checked["loinc_code_true"]).all()
    assert (checked["unit"] == checked["unit_true"]).all()
    # the source value was rounded to its decimals in the local unit: allow half its last digit, converted
    decimals = checked["source_value"].str.split(".").str[1].str.len().fillna(0)
    factor = checked["value"] / checked["source_value"].astype(float)
    tolerance = 0.5 * 10.0 ** -decimals * factor.abs() + 1e-4
    assert ((checked["value"] - checked["value_true"].astype(float)).abs() <= tolerance).all()

    vitals = _traced(spark, region, "vital_sign", "loinc_code", "value", "unit")
    codes = read_truth(region.truth, "codes").query("entity == 'vital_sign'")
    checked = vitals.merge(codes[["hospital_id", "record_id", "code", "value", "unit"]],
                           on=["hospital_id", "record_id"],
                           suffixes=("", "_true"))
    checked = _clean(region, "vital_sign", checked)
    assert len(checked) > 0.9 * len(vitals)
    assert (checked["loinc_code"] == checked["code"]).all()
    assert (checked["unit"] == checked["unit_true"]).all()
    assert ((checked["value"] - checked["value_true"].astype(float)).abs() <= 1e-3 * checked["value"].abs()).all()


def test_codes_map_to_the_standard_vocabularies(spark, region):
    codes = read_truth(region.truth, "codes")
    for entity, column in (("diagnosis", "icd10_code"), ("procedure", "icd9cm3_code"), ("medication", "atc_code")):
        silver = _traced(spark, region, entity, column, "is_mapped")
        truth = codes.loc[codes["entity"] == entity, ["hospital_id", "record_id", "code"]]
        checked = silver.merge(truth, on=["hospital_id", "record_id"])
        clean = _clean(region, entity, checked)
        assert len(clean) > 0.9 * len(silver), entity
        assert (clean[column] == clean["code"]).all(), entity
        assert clean["is_mapped"].all(), entity


# the rule that must catch each planted value defect (kind) of each entity
EXPECTED_RULE = {
    "patient": {"unparseable_date": "person_update_time_parsed", "missing_required": "person_has_mrn",
                "impossible_value": "person_birth_plausible"},
    "encounter": {"unparseable_date": "encounter_admit_time_parsed", "missing_required": "encounter_has_source_id",
                  "impossible_value": "encounter_discharge_after_admit"},
    **{entity: {"unparseable_date": time_rule, "missing_required": f"{prefix}_has_source_id",
                "unknown_code": f"{prefix}_code_mapped", "orphan": f"{prefix}_encounter_exists",
                "impossible_value": f"{prefix}_value_plausible"}
       for entity, prefix, time_rule in (
           ("diagnosis", "diagnosis", "diagnosis_time_parsed"), ("procedure", "procedure", "procedure_time_parsed"),
           ("lab_result", "lab", "lab_result_time_parsed"), ("vital_sign", "vital", "vital_measured_at_parsed"),
           ("medication", "medication", "medication_start_time_parsed"),
           ("imaging_report", "imaging", "imaging_report_time_parsed"), ("note", "note", "note_time_parsed"))},
}
SILVER_OF = {"patient": "person"}


def _judged(spark, region) -> pd.DataFrame:
    """Every bronze row that reached silver or silver's quarantine: (entity, file, line, record_id, encounter_id,
    rules) where rules are the DQ rules it failed (dq_flags, or the quarantine reason)."""
    root = region.settings.root
    quarantine = io.read(spark, QUARANTINE, root).where("layer = 'silver'").select(
        "entity", "source_file", "source_line", F.split(F.regexp_replace("reason", "^rule ", ""), ", ").alias("rules"))
    parts = []
    for entity in BRONZE:
        table = SILVER_OF.get(entity, entity)
        kept = io.read(spark, SILVER[table], root).select(
            F.lit(table).alias("entity"), "source_file", "source_line", F.col("dq_flags").alias("rules"))
        rows = kept.unionByName(quarantine.where(F.col("entity") == table))
        bronze = io.read(spark, BRONZE[entity], root).select(
            F.col("_source_file").alias("source_file"), F.col("_source_line").alias("source_line"),
            F.col(ID_FIELDS[entity]).alias("record_id"),
            (F.col("encounter_id") if entity != "patient" else F.lit(None).cast("string")).alias("encounter_id"),
            F.col("_hospital_id").alias("hospital_id"))
        parts.append(rows.join(bronze, ["source_file", "source_line"]).withColumn("bronze_entity", F.lit(entity)))
    frame = reduce(DataFrame.unionByName, parts).toPandas()
    frame["file"] = frame["source_file"].str.split("/landing/").str[-1]
    frame["line"] = frame["source_line"].astype(str)
    return frame


def test_planted_value_defects_are_caught_by_their_rule_and_clean_rows_are_not_flagged(spark, region):
    judged = _judged(spark, region)
    defects = read_truth(region.truth, "defects")
    planted = defects[defects["kind"].isin(VALUE_DEFECTS)]
    # precondition: every kind of value defect was planted, in files that landed
    assert set(planted["kind"]) == set(VALUE_DEFECTS)
    matched = planted.merge(judged, left_on=["entity", "file", "line"], right_on=["bronze_entity", "file", "line"],
                            suffixes=("", "_row"))
    resent = set(_keys(read_truth(region.truth, "resends")))
    missing = planted[~planted.set_index(["entity", "file", "line"]).index.isin(
        matched.set_index(["entity", "file", "line"]).index)]
    # a planted row not in silver was superseded by a later version of its record (or its file failed as a whole)
    assert all(k in resent for k in _keys(missing[missing["file"].isin(set(judged["file"]))]))
    caught = [EXPECTED_RULE[e][k] in list(rules) for e, k, rules in matched[["entity", "kind", "rules"]].itertuples(
        index=False, name=None)]
    assert len(matched) >= 0.9 * len(planted)
    assert sum(caught) >= 0.99 * len(matched), matched.loc[[not c for c in caught], ["entity", "kind", "rules"]]

    # clean: no planted defect on the record; an orphan whose encounter had one (or was cancelled) is explained
    touched = set(_keys(defects))
    encounters = defects[defects["entity"] == "encounter"]
    cancelled = read_truth(region.truth, "resends").query("entity == 'encounter' and kind == 'cancelled'")
    landed = io.read(spark, BRONZE["encounter"], region.settings.root).select("_hospital_id", "encounter_id")
    # a lab of a stay still in hospital at the export has no encounter record yet: rightly flagged, not clean
    not_sent = set(_keys(judged[["hospital_id", "encounter_id"]].rename(columns={"encounter_id": "record_id"})
                         .dropna())) - {(r._hospital_id, r.encounter_id) for r in landed.collect()}
    bad_parents = set(_keys(encounters)) | set(_keys(cancelled)) | not_sent
    planted_lines = set(defects[["entity", "file", "line"]].itertuples(index=False, name=None))
    clean = judged[[k not in touched for k in _keys(judged)]]
    clean = clean[[k not in planted_lines for k in clean[["bronze_entity", "file", "line"]].itertuples(
        index=False, name=None)]]
    clean = clean[[(h, e) not in bad_parents for h, e in clean[["hospital_id", "encounter_id"]].itertuples(
        index=False, name=None)]]
    flagged = clean[clean["rules"].map(len) > 0]
    assert len(clean) > 0.7 * len(judged), (len(clean), len(judged))  # vitals of stays not yet sent: many
    assert len(flagged) <= 0.001 * len(clean), flagged[["bronze_entity", "rules"]].head(20)


def test_dq_results_per_rule_and_hospital_and_the_report_and_coverage_commands(spark, region, tmp_path, capsys):
    root = region.settings.root
    results = io.read(spark, DQ_RESULT, root).toPandas()
    configured = {r.name for t in region.settings.dq.values() for r in [*t.rules, *t.checks]}
    assert set(results["rule"]) == configured
    unique = results[results["kind"] == "uniqueness"]
    assert (unique["failed_rows"] == 0).all() and (unique["status"] == "pass").all()
    assert (results["checked_rows"] >= results["failed_rows"]).all()
    code_rules = results[results["rule"] == "lab_code_mapped"]
    assert code_rules["failed_rows"].sum() > 0  # the planted unknown codes
    # the generator ends every record at its death, and its only births after an event are the planted
    # impossible birth years (2099)
    assert (results[results["kind"] == "before_death"]["failed_rows"] == 0).all()
    assert results[results["rule"] == "encounter_not_before_birth"]["failed_rows"].sum() > 0

    conf = str(region.settings.conf_dir)
    assert main(["dq-report", "--conf-dir", conf, "--root", root, "--out", str(tmp_path)]) == 0
    page = (tmp_path / "dq-report.html").read_text(encoding="utf-8")
    assert "<svg" in page and "lab_value_plausible" in page and "H05" in page
    assert main(["vocab-coverage", "--conf-dir", conf, "--root", root, "--top", "2"]) == 0
    out = capsys.readouterr().out
    lines = [line.split() for line in out.splitlines() if line.startswith("H0")]
    assert {(h, e) for h, e, *_ in lines} >= {("H01", "lab_result"), ("H05", "medication"), ("H02", "diagnosis")}
    assert all(float(cov.rstrip("%")) > 95 for *_, cov in lines)
    assert "top unmapped codes" in out and " ZZ" in out  # the planted unknown codes lead the unmapped


def _comparable(frame: DataFrame) -> DataFrame:
    """A silver table without what depends on where and when it was landed (folder, batch) or on the order
    records met the person index (which record's id a person took: see `_persons`)."""
    return (frame.withColumn("source_file", F.regexp_extract("source_file", "/landing/(.*)$", 1))
            .drop("batch_id", "person_key"))


def _persons(spark, root: str) -> set[frozenset]:
    """The person index as a partition of patient records (tiny region: a few hundred groups)."""
    rows = io.read(spark, SILVER["person"], root).groupBy("person_key").agg(F.collect_set("patient_key").alias("p"))
    return {frozenset(r.p) for r in rows.collect()}


def test_day_by_day_increments_equal_the_region_refined_at_once_and_a_full_pass(spark, region, tmp_path):
    days = sorted({p.name for p in region.landing.glob("*/*") if p.is_dir()})
    resends = read_truth(region.truth, "resends")
    # precondition: day 2 really holds corrections and cancellations
    assert len(days) == 2
    assert {"corrected", "cancelled"} <= set(resends.loc[resends["day"] == days[1], "kind"])
    settings = region.settings.model_copy(update={"root": str(tmp_path / "root")})
    landing = tmp_path / "landing"

    def refine_day(n: int) -> None:
        ingest(spark, settings, str(landing), f"day-{n}")
        refine(spark, settings, secrets.pseudonym_key(settings), secrets.vault_key(settings), f"refine-day-{n}")

    for n, day in enumerate(days, start=1):
        for folder in sorted(region.landing.glob(f"*/{day}")):
            (landing / folder.parent.name).mkdir(parents=True, exist_ok=True)
            (landing / folder.parent.name / day).symlink_to(folder)
        refine_day(n)
        if n == len(days):  # the region was linked once, after refining both days (test_identity: increments)
            link(spark, settings, secrets.pseudonym_key(settings), secrets.vault_key(settings), "link")
        if n == 1:
            first = {t: io.read(spark, ref, settings.root).count() for t, ref in SILVER.items()}
    state = io.read(spark, REFINE_STATE, settings.root).orderBy("refined_at").collect()
    assert [r.batch_id for r in state] == ["day-1", "day-2"]  # the second refine read day 2's batch only
    for table, ref in SILVER.items():
        assert first[table] > 0
        assert_df_equality(_comparable(io.read(spark, ref, settings.root)),
                           _comparable(io.read(spark, ref, region.settings.root)),
                           ignore_row_order=True, ignore_nullable=True)
    assert _persons(spark, settings.root) == _persons(spark, region.settings.root)

    # day 3: a hospital re-cuts one of day 2's lab files under another name, every line an exact duplicate (in
    # another order: a byte-identical file would be ledgered as a duplicate file and never read)
    counts = {t: io.read(spark, ref, settings.root).count() for t, ref in SILVER.items()}
    largest = max(region.landing.glob(f"*/{days[1]}/lab_result-*.csv"), key=lambda path: path.stat().st_size)
    again = [line + b"\n" for line in largest.read_bytes().splitlines()]
    assert len(again) > 2  # precondition: at least two records, so the re-cut differs from the original file
    resent_to = landing / largest.parent.parent.name / "day-3"
    resent_to.mkdir()
    (resent_to / "lab_result-resent.csv").write_bytes(b"".join([again[0], *reversed(again[1:])]))
    refine_day(3)
    resent = io.read(spark, BRONZE["lab_result"], settings.root).where("_batch_id = 'day-3'").count()
    assert resent > 0  # precondition: the duplicates are in bronze
    assert {t: io.read(spark, ref, settings.root).count() for t, ref in SILVER.items()} == counts
    # a new vocabulary version (a local lab code mapped, one unit's factor changed) re-maps, on the next refine,
    # the rows whose codes it changed (the re-cut's records included) and only them: every other row, in every
    # table, is as the three increments left it, its vocab_version included
    versions = {t: io.latest_version(spark, ref, settings.root) for t, ref in SILVER.items()}
    labs, vitals = (io.read(spark, SILVER[t], settings.root) for t in ("lab_result", "vital_sign"))
    code = labs.where(~F.col("is_mapped")).select("hospital_id", "source_code").first()
    pair = vitals.where("unit_ok").select("loinc_code", "source_unit").first()
    assert code is not None and pair is not None  # precondition: a planted unknown code, a converted vital
    conf = tmp_path / "conf"
    shutil.copytree(region.settings.conf_dir, conf)
    (conf / "vocab" / "VERSION").write_text("2099.1.1\n")
    with (conf / "vocab" / "lab_codes.csv").open("a", encoding="utf-8") as vocabulary:
        vocabulary.write(f"{code.hospital_id},{code.source_code},14749-6,Glucose\n")
    units = (conf / "vocab" / "units.csv").read_text(encoding="utf-8").splitlines()
    changed = [n for n, line in enumerate(units) if line.startswith(f"{pair.loinc_code},{pair.source_unit},")]
    assert len(changed) == 1
    *unit_pair, factor = units[changed[0]].split(",")
    factor = float(factor) * 1.0001
    units[changed[0]] = ",".join([*unit_pair, repr(factor)])
    (conf / "vocab" / "units.csv").write_text("\n".join(units) + "\n", encoding="utf-8")
    remapped = load_settings(conf, "local", settings.root)
    assert remapped.refine_hash == settings.refine_hash and remapped.config_hash != settings.config_hash
    refine(spark, remapped, secrets.pseudonym_key(remapped), secrets.vault_key(remapped), "refine-vocab")
    affected = {"lab_result": (F.col("hospital_id") == code.hospital_id) & (F.col("source_code") == code.source_code),
                "vital_sign": (F.col("loinc_code") == pair.loinc_code) & (F.col("source_unit") == pair.source_unit)}
    labs, vitals = (io.read(spark, SILVER[t], settings.root) for t in ("lab_result", "vital_sign"))
    assert {(r.loinc_code, r.is_mapped, r.vocab_version) for r in labs.where(affected["lab_result"]).collect()} == {
        ("14749-6", True, "2099.1.1")}
    expected = F.round(F.col("source_value").cast("double") * factor, 4)
    converted = vitals.where(affected["vital_sign"]).select((F.col("value") == expected).alias("converted"),
                                                             "vocab_version").distinct().collect()
    assert {(r.converted, r.vocab_version) for r in converted} == {(True, "2099.1.1")}
    for table, ref in SILVER.items():
        now, before = (io.read(spark, ref, settings.root, version) for version in (None, versions[table]))
        if table in affected:
            assert io.latest_version(spark, ref, settings.root) > versions[table]
            now, before = now.where(~affected[table]), before.where(~affected[table])
        assert_df_equality(now, before, ignore_row_order=True, ignore_nullable=True)
    assert io.read(spark, REFINE_STATE, settings.root).count() == 3  # no batch was refined again
    history = spark.sql(f"DESCRIBE HISTORY delta.`{SILVER['lab_result'].path(settings.root)}`").first()
    assert "vocab 2099.1.1" in history.userMetadata and "re-map of lab_result, vital_sign" in history.userMetadata
    # the next refine finds the mappings recorded: nothing to do
    refine(spark, remapped, secrets.pseudonym_key(remapped), secrets.vault_key(remapped), "refine-again")
    assert io.latest_version(spark, SILVER["lab_result"], settings.root) == history.version
