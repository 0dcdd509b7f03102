"""`lakehouse erase`: a person linked across hospitals leaves every layer of a copy of the shared region (bronze
by their MRNs, the vault, silver, gold timelines, cohorts, features and predictions, quarantined text), nobody else
loses a row, earlier versions are vacuumed (retention 0 here), the audit log says that and why but not whose, and
no rollback can bring them back."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from delta.tables import DeltaTable
from deltalake import DeltaTable as RsTable
from pyspark.sql import functions as F

from lakehouse import cli, io, secrets
from lakehouse.catalog import AUDIT_LOG, JOB_RUN, PERSON, PERSON_EVENT, PERSON_LINK
from lakehouse.config import ErasureSettings
from lakehouse.erasure import erase, vacuum
from lakehouse.errors import UsageError
from lakehouse.rollback import RollbackRefused, rollback
from lakehouse.runlog import JobRun
from lakehouse.services.store import run as delta_query
from lakehouse.silver import vault

REASON = "test: consent withdrawn (ticket 42)"


def _holding(spark, root: str, person: str, keys: list[str], mrns: set[tuple[str, str]]) -> dict[str, int]:
    """Rows that name the person, per table: by person_key, patient_key, or (bronze) hospital and MRN."""
    held = {}
    for ref in io.list_tables(spark, root):
        df = io.read(spark, ref, root)
        if "person_key" in df.columns:
            n = df.where(F.col("person_key") == person).count()
        elif "patient_key" in df.columns:
            n = df.where(F.col("patient_key").isin(keys)).count()
        elif ref.layer == "bronze":
            n = df.where(F.struct(F.col("_hospital_id"), F.regexp_replace("mrn", "^Patient/", ""))
                         .isin([F.struct(F.lit(h), F.lit(m)) for h, m in mrns])).count()
        else:
            continue
        if n:
            held[ref.qualified] = n
    return held


def _other_record(links, keys: list[str]) -> str:
    return links.where(~F.col("patient_key").isin(keys)).orderBy("patient_key").first().patient_key


def _ids(links, person: str) -> list[str]:
    return sorted(r.person_id for r in links.where(F.col("person_key") == person).select("person_id").distinct()
                  .collect())


@pytest.fixture(scope="module")
def erased(region, spark, settings, tmp_path_factory):
    root = tmp_path_factory.mktemp("erase") / "root"
    shutil.copytree(settings.root, root, ignore=shutil.ignore_patterns("mlflow"))
    local = settings.model_copy(update={"root": str(root), "main": settings.main.model_copy(
        update={"erasure": ErasureSettings(retention_hours=0)})})
    links = io.read(spark, PERSON_LINK, local.root)
    features = spark.read.format("delta").load(f"{root}/gold/features_readmission_30d").select("person_key")
    person = (links.groupBy("person_key").agg(F.countDistinct("hospital_id").alias("n")).where("n >= 2")
              .join(features, "person_key").orderBy("person_key").first().person_key)
    keys = [r.patient_key for r in links.where(F.col("person_key") == person).collect()]
    mrns = {(r.hospital_id, r.mrn) for r in vault.plaintext(spark, local.root, secrets.vault_key(local))
            .where(F.col("patient_key").isin(keys)).collect()}
    with JobRun(spark, local, "probe") as probe:  # a run before the erasure that wrote one of the tables it changes
        probe.wrote(io.append(spark, spark.createDataFrame([(person, 1)], "person_key STRING, n INT"),
                              io.TableRef("gold", "probe", ""), local.root))
    # another person's record is made to name theirs as its strongest partner, and one of its link events their id
    # as the one it came from (the tiny region has no such pair): the erasure must null both, deleting neither
    other = _other_record(links, keys)
    DeltaTable.forPath(spark, PERSON_LINK.path(local.root)).update(
        F.col("patient_key") == other, {"matched_patient_key": F.lit(keys[0])})
    DeltaTable.forPath(spark, PERSON_EVENT.path(local.root)).update(
        F.col("patient_key") == other, {"other_person_id": F.lit(_ids(links, person)[0])})
    before = _holding(spark, local.root, person, keys, mrns)
    totals = {t: io.describe(spark, io.TableRef(*t.split("."), ""), local.root).rows for t in before}
    versions = {t: io.latest_version(spark, io.TableRef(*t.split("."), ""), local.root) for t in before}
    result = erase(spark, local, person, REASON)
    return local, person, keys, mrns, before, totals, versions, result, probe.run_id


def test_the_person_is_gone_from_every_layer_and_nobody_else_lost_a_row(erased, spark, settings):
    local, person, keys, mrns, before, totals, _, result, _ = erased
    links = io.read(spark, PERSON_LINK, settings.root)  # the region's, untouched
    other, ids = _other_record(links, keys), _ids(links, person)
    # the other person's rows stay, no longer naming them
    assert [tuple(r) for r in io.read(spark, PERSON_LINK, local.root).where(F.col("patient_key") == other)
            .select("matched_patient_key").collect()] == [(None,)]
    events = io.read(spark, PERSON_EVENT, local.root)
    assert events.where(F.col("patient_key") == other).count() >= 1
    assert events.where(F.col("person_id").isin(ids) | F.col("other_person_id").isin(ids)).isEmpty()
    assert result.unlinked == ["silver.person_link", "silver.person_event"]
    assert {"bronze.patient", "vault.identity", "silver.person", "silver.person_link", "silver.encounter",
            "gold.patient_timeline", "gold.patient_summary", "gold.features_readmission_30d"} <= set(before)
    assert _holding(spark, local.root, person, keys, mrns) == {}
    for table, rows in before.items():
        assert result.deleted[table] >= rows, table  # quarantined rows may be among them too
        if table != "ops.quarantine":
            assert io.describe(spark, io.TableRef(*table.split("."), ""), local.root).rows == totals[table] - rows
    assert result.records == len(keys) >= 2 and result.landing_files


def test_earlier_versions_still_hold_the_person_until_vacuumed(erased, spark):
    local, person, _, _, _, _, versions, _, _ = erased
    old = versions["silver.person"]
    assert io.read(spark, PERSON, local.root, old).where(F.col("person_key") == person).collect()  # time travel
    assert vacuum(spark, local, ["silver.person", "gold.patient_timeline"]) == [
        "silver.person", "gold.patient_timeline"]
    with pytest.raises(Exception, match="(?i)FileNotFound|does not exist|DELTA_FILE_NOT_FOUND"):
        io.read(spark, PERSON, local.root, old).where(F.col("person_key") == person).collect()
    assert not any((Path(PERSON.path(local.root)) / "_change_data").iterdir())  # the deleted rows' change data too
    assert len(DeltaTable.forPath(spark, PERSON.path(local.root)).history().collect()) > old  # the history stays


def test_no_commit_of_the_erasure_names_them(erased):
    local, person, keys, mrns, _, _, _, result, _ = erased
    infos = [json.loads(line)["commitInfo"] for log in Path(local.root).glob("*/*/_delta_log/*.json")
             if log.parent.parent.name != JOB_RUN.name  # the run's own row
             for line in log.read_text().splitlines() if '"commitInfo"' in line]
    mine = [info for info in infos if result.run_id in (info.get("userMetadata") or "")]
    # its deletes, and the nulling of the pointers in the person index
    assert {info["operation"] for info in mine} == {"MERGE"} and len(mine) >= len(result.deleted) + 2
    said = json.dumps([info.get("operationParameters") for info in mine])
    assert [v for v in (person, *keys, *(mrn for _, mrn in mrns)) if v in said] == []


def test_the_audit_log_keeps_that_and_why_not_whose(erased, spark):
    local, person, keys, _, _, _, _, result, _ = erased
    rows = delta_query("SELECT * FROM log WHERE action = 'erase'", log=RsTable(AUDIT_LOG.path(local.root))).to_pylist()
    (row,) = rows
    assert row["purpose"] == REASON and row["rows"] == sum(result.deleted.values())
    assert row["tables"] == sorted(result.deleted)
    logged = json.dumps(rows, default=str) + json.dumps(
        [r.asDict(True) for r in io.read(spark, JOB_RUN, local.root).where("job = 'erase'").collect()], default=str)
    assert not any(k in logged for k in [person, *keys])


def test_no_rollback_brings_them_back(erased, spark):
    local, _, _, _, _, _, _, result, probe = erased
    with pytest.raises(RollbackRefused, match=f"erasure run {result.run_id}"):
        rollback(spark, local, result.run_id, force=True)
    with pytest.raises(RollbackRefused, match="an erased person never comes back"):
        rollback(spark, local, probe, force=True)  # its table was erased from after it


def test_an_unknown_person_or_no_reason_changes_nothing(erased, spark, capsys):
    local = erased[0]
    version = io.latest_version(spark, PERSON, local.root)
    with pytest.raises(UsageError, match="no such person"):
        erase(spark, local, "0" * 64, REASON)
    assert cli.main(["erase", "--person", "x", "--reason", " ", "--root", local.root]) == 2
    assert "needs a reason" in capsys.readouterr().err
    assert io.latest_version(spark, PERSON, local.root) == version
