"""Identity: the regional person index, the encrypted vault, de-identified text and the PII scan."""

from __future__ import annotations

import base64
import shutil

import pytest
from chispa import assert_df_equality
from conftest import CONF, TEST_KEYS
from pyspark.sql import functions as F

from lakehouse import io, secrets
from lakehouse.catalog import IDENTITY, JOB_RUN, PERSON_EVENT, PERSON_LINK, SILVER
from lakehouse.cli import main
from lakehouse.silver import vault, vocab
from lakehouse.silver.link import assign_ids, candidate_pairs, components, events, features, link, link_rows, scored
from lakehouse.silver.pii import scan
from lakehouse.synth.generator import read_truth
from lakehouse.synth.linkage_truth import evaluate
from lakehouse.synth.people import check_character
from lakehouse.synth.scrub_truth import scrub_quality

VAULT_KEY = bytes.fromhex(TEST_KEYS["LAKEHOUSE_VAULT_KEY"])
WRONG_KEY = bytes.fromhex("33" * 32)


def national_id(body17: str) -> str:
    return body17 + check_character(body17)


ID_A, ID_D, ID_E = (national_id("12010119800307123"), national_id("12010119800520456"),
                    national_id("12010119800307789"))
MISTYPED_A = ID_A[:12] + "9" + ID_A[13:]  # one digit of the birth date changed: the check character fails
PLAIN = [  # patient_key, hospital, name, national ID, birth date, phone, address
    ("a", "H01", "王小明", ID_A, "1980-03-07", "13900000001", "天津市和平区解放路12号"),
    ("b", "H02", "WANG XIAOMING", None, "1980-07-03", "13900000001", "天津市和平区解放路12号"),  # pinyin; dob swap
    ("c", "H03", "王明小", MISTYPED_A, "1980-03-07", "13700000009", "天津市和平区解放路12号"),  # transposed
    ("d", "H01", "王晓明", ID_D, "1980-05-20", "13600000002", "天津市南开区黄河道3号"),  # a namesake
    ("e", "H04", "王丽丽", ID_E, "1980-03-07", "13500000003", "天津市和平区解放路12号"),  # a twin
    ("f", "H05", None, None, None, None, None),  # nothing to match on
]


@pytest.fixture(scope="module")
def feats(spark, settings):
    plain = spark.createDataFrame(PLAIN, "patient_key STRING, hospital_id STRING, name STRING, national_id STRING, "
                                         "birth_date STRING, phone STRING, address STRING")
    persons = spark.createDataFrame([(k, "male" if k != "e" else "female") for k, *_ in PLAIN],
                                    "patient_key STRING, sex STRING")
    return features(plain, persons, vocab.load(spark, settings.vocab_dir, "pinyin")).cache()


def test_pairs_are_compared_field_by_field_across_scripts_and_typing_slips(spark, settings, feats):
    pairs = candidate_pairs(feats, settings.linkage).pairs
    got = (scored(pairs, feats, settings.linkage)
           .select("left", "right", F.col("levels")["name"].alias("name"), F.col("levels")["birth_date"].alias("dob"),
                   F.col("levels")["national_id"].alias("id"), F.col("levels")["phone"].alias("phone"), "rule"))
    expected = spark.createDataFrame([
        ("a", "b", "same_sound", "day_month_swapped", "missing", "exact", "score"),  # characters vs pinyin
        ("a", "c", "transposed", "exact", "near", "differ", "score"),
        ("a", "d", "same_sound", "same_year", "conflict", "differ", None),  # blocked on pinyin + birth year
        ("a", "e", "surname_only", "exact", "conflict", "differ", None),  # the twin
        ("b", "d", "same_sound", "same_year", "missing", "differ", None),  # no ID to tell them apart: too weak
        ("c", "e", "surname_only", "exact", "differ", "differ", None),
    ], "left STRING, right STRING, name STRING, dob STRING, id STRING, phone STRING, rule STRING")
    assert_df_equality(got, expected, ignore_row_order=True, ignore_nullable=True)


def test_records_without_identifiers_are_their_own_flagged_person(spark, settings, feats):
    pairs = scored(candidate_pairs(feats, settings.linkage).pairs, feats, settings.linkage)
    membership = feats.select("patient_key", F.col("patient_key").alias("component"))
    assigned = assign_ids(membership, spark.createDataFrame([], "patient_key STRING, person_id STRING"), "r1")
    rows = {r.patient_key: r for r in link_rows(feats, pairs, assigned, bytes(32), "r1").collect()}
    assert rows["f"].flags == ["no_usable_identifier"] and rows["f"].rule == "single" and rows["f"].person_id == "f"
    assert rows["a"].flags == [] and rows["a"].rule == "score" and rows["a"].matched_patient_key == "c"  # strongest
    assert set(rows["a"].agreed) == {"name", "birth_date", "national_id", "sex", "address"}
    assert rows["b"].matched_patient_key == "a" and set(rows["b"].agreed) == {"name", "birth_date", "sex", "phone",
                                                                                "address"}


def test_person_ids_stay_stable_and_merges_splits_and_joins_are_recorded(spark):
    edges = spark.createDataFrame([("a", "b"), ("b", "c"), ("d", "g")], "left STRING, right STRING")
    found = components(edges)
    assert {(r.patient_key, r.component) for r in found.collect()} == {
        ("a", "a"), ("b", "a"), ("c", "a"), ("d", "d"), ("g", "d")}
    membership = found.unionByName(spark.createDataFrame([("e", "e"), ("f", "f")], "patient_key STRING, "
                                                                                      "component STRING"))
    previous = spark.createDataFrame([("a", "P1"), ("b", "P1"), ("c", "P2"), ("d", "P3"), ("e", "P3")],
                                     "patient_key STRING, person_id STRING")
    assigned = assign_ids(membership, previous, "r2")
    assert {(r.patient_key, r.person_id) for r in assigned.collect()} == {
        ("a", "P1"), ("b", "P1"), ("c", "P1"), ("d", "P3"), ("g", "P3"), ("e", "e"), ("f", "f")}
    got = events(assigned, "r2").select("event", "person_id", "other_person_id", "patient_key")
    expected = spark.createDataFrame([("merged", "P1", "P2", "c"), ("joined", "P3", None, "g"),
                                      ("split", "e", "P3", "e"), ("created", "f", None, "f")],
                                     "event STRING, person_id STRING, other_person_id STRING, patient_key STRING")
    assert_df_equality(got, expected, ignore_row_order=True, ignore_nullable=True)


def test_the_person_index_finds_the_generators_persons_and_every_table_follows_it(spark, region):
    root = region.settings.root
    quality = evaluate(spark, root, region.truth, secrets.pseudonym_key(region.settings))
    assert quality["precision"] >= 0.995 and quality["recall"] >= 0.98, quality
    assert quality["hard_negatives_apart"] >= 0.99, quality
    for kind, found in quality["recall_by_noise_kind"].items():
        assert found["records"] > 0 and found["recall"] >= 0.9, (kind, found)
    assert len(quality["recall_by_noise_kind"]) == 6  # five noise kinds and none: all present in the region
    links = io.read(spark, PERSON_LINK, root).select("patient_key", F.col("person_key").alias("linked"))
    for name, ref in SILVER.items():
        rows = io.read(spark, ref, root)
        assert rows.join(links, "patient_key").where(F.col("person_key") != F.col("linked")).count() == 0, name
    # a second run over unchanged data changes nobody
    before = io.read(spark, PERSON_LINK, root).select("patient_key", "person_id")
    link(spark, region.settings, secrets.pseudonym_key(region.settings), VAULT_KEY, "link-again")
    assert io.read(spark, PERSON_EVENT, root).where("run_id = 'link-again'").count() == 0
    assert_df_equality(io.read(spark, PERSON_LINK, root).select("patient_key", "person_id"), before,
                       ignore_row_order=True)


def test_the_vault_is_ciphertext_without_the_key_and_a_wrong_key_stops_before_writing(spark, region, test_root,
                                                                                        monkeypatch, capsys):
    root = region.settings.root
    names = set(read_truth(region.truth, "patient_records")["name"])
    stored = (io.read(spark, IDENTITY, root).where(F.col("name_enc").isNotNull())
              .select(F.col("name_enc").cast("string").alias("raw"), F.length("name_enc").alias("bytes")).collect())
    assert stored and all(r.raw not in names and r.bytes >= 28 for r in stored)  # 12-byte IV + 16-byte tag
    assert set(r.name for r in vault.plaintext(spark, root, VAULT_KEY).select("name").collect()) & names
    with pytest.raises(Exception, match="AES_CRYPTO_ERROR"):
        vault.plaintext(spark, root, WRONG_KEY).collect()
    versions = {ref.name: io.latest_version(spark, ref, root) for ref in (PERSON_LINK, PERSON_EVENT, IDENTITY)}
    monkeypatch.setenv("LAKEHOUSE_VAULT_KEY", WRONG_KEY.hex())
    assert main(["link", "--force", "--conf-dir", str(CONF), "--root", root]) == 2
    assert main(["refine", "--full", "--conf-dir", str(CONF), "--root", root]) == 2
    assert "does not open vault.identity" in capsys.readouterr().err
    assert {ref.name: io.latest_version(spark, ref, root) for ref in (PERSON_LINK, PERSON_EVENT, IDENTITY)} == versions
    # the key is in no plan, event log or job log
    secret = {VAULT_KEY.hex(), VAULT_KEY.hex().upper(), base64.b64encode(VAULT_KEY).decode()}
    plan = vault.plaintext(spark, root, VAULT_KEY)._jdf.queryExecution().toString()
    assert "Scan ExistingRDD" in plan and not any(s in plan for s in secret)
    logs = list((test_root / "spark-events").rglob("*"))
    assert any(f.is_file() and f.stat().st_size > 0 for f in logs)  # precondition: event logs were written
    for file in (f for f in logs if f.is_file()):
        text = file.read_bytes().decode("latin-1")
        assert not any(s in text for s in secret), file
    messages = " ".join(str(r.message) for r in io.read(spark, JOB_RUN, root).collect())
    assert not any(s in messages for s in secret)


def test_rotating_the_key_re_encrypts_the_vault(spark, region, tmp_path, monkeypatch):
    root = str(tmp_path / "root")
    rows = vault.plaintext(spark, region.settings.root, VAULT_KEY).limit(20)
    io.overwrite(spark, vault.encrypted(rows, vault.key_frame(spark, VAULT_KEY)), IDENTITY, root)
    expected = sorted(vault.plaintext(spark, root, VAULT_KEY).drop("updated_at").collect())
    assert len(expected) == 20
    new = bytes.fromhex("44" * 32)
    monkeypatch.setenv("NEW_VAULT_KEY", new.hex())
    assert main(["vault", "rotate-key", "--new-key-env", "NEW_VAULT_KEY", "--conf-dir", str(CONF), "--root", root]) == 0
    assert sorted(vault.plaintext(spark, root, new).drop("updated_at").collect()) == expected
    with pytest.raises(vault.VaultKeyError):
        vault.check_key(spark, root, VAULT_KEY, "LAKEHOUSE_VAULT_KEY")
    with pytest.raises(Exception, match="AES_CRYPTO_ERROR"):
        vault.plaintext(spark, root, VAULT_KEY).collect()


def test_no_birth_dates_and_no_one_older_than_90_in_research_data(spark, region):
    persons = io.read(spark, SILVER["person"], region.settings.root)
    assert not [c for c in persons.columns if "birth_date" in c or "date_of_birth" in c]
    bands = {r.age_band for r in persons.select("age_band").distinct().collect()}
    assert "90+" in bands and len(bands) > 5  # precondition: the region has people over 89
    as_of = F.year(F.coalesce(F.col("updated_at"), F.current_date()))  # ages are as of the record's last update
    assert persons.where(as_of - F.col("birth_year") > 90).count() == 0


def test_notes_are_scrubbed_of_the_identifiers_the_generator_planted(spark, region):
    """Recall per kind against the planted identifiers; precision of what the scrubber removed."""
    quality = scrub_quality(spark, region.settings, region.truth)
    recall = {kind: found["recall"] for kind, found in quality["recall"].items()}
    assert recall["national_id"] >= 0.99 and recall["phone"] >= 0.99 and recall["mrn"] >= 0.99, quality
    assert recall["name"] >= 0.95 and recall["relative_name"] >= 0.95, quality  # relatives are registered nowhere
    assert quality["removed"] > 100 and quality["precision"] >= 0.95, quality
    assert quality["hospitals"] == sorted(region.settings.sources), quality  # every dialect's notes measured
    # and silver holds the scrubbed text: no planted ID number (mistyped ones too) or phone is left in it
    planted = spark.createDataFrame(read_truth(region.truth, "note_identifiers")[["hospital_id", "note_id", "kind",
                                                                                    "value"]])
    notes = io.read(spark, SILVER["note"], region.settings.root).select(
        "hospital_id", F.col("source_id").alias("note_id"), "note_text")
    left = (planted.where(F.col("kind").isin("national_id", "phone")).join(notes, ["hospital_id", "note_id"])
            .where(F.col("note_text").contains(F.col("value"))))
    assert notes.count() > 0 and left.count() == 0


def test_pii_scan_finds_nothing_in_the_region_and_finds_a_planted_identifier(spark, region, tmp_path, capsys):
    root = region.settings.root
    assert main(["pii-scan", "--conf-dir", str(CONF), "--root", root]) == 0
    assert "no direct identifiers found" in capsys.readouterr().out
    planted_root = str(tmp_path / "root")
    shutil.copytree(IDENTITY.path(root), IDENTITY.path(planted_root))
    name = vault.plaintext(spark, root, VAULT_KEY).where("name RLIKE '^[^A-Z]+$'").select("name").first().name
    notes = io.read(spark, SILVER["note"], root).limit(3).withColumn(
        "note_text", F.concat(F.col("note_text"), F.lit(f"复诊联系{ID_A}或13912345678，{name}")))
    io.overwrite(spark, notes, SILVER["note"], planted_root)
    hits = {(h.table, h.column, h.kind): h for h in scan(spark, planted_root, VAULT_KEY)}
    assert set(hits) == {("silver.note", "note_text", "national_id"), ("silver.note", "note_text", "phone"),
                         ("silver.note", "note_text", "name")}
    assert all(h.rows == 3 for h in hits.values())
    assert hits[("silver.note", "note_text", "national_id")].sample == ID_A[0] + "*" * 16 + ID_A[-1]
    assert main(["pii-scan", "--conf-dir", str(CONF), "--root", planted_root]) == 1
