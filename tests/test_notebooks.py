"""The notebooks run headless, each in its own kernel, on a copy of the shared tiny region (they write
a cohort and predictions); what each one found is checked against the tables themselves."""

from __future__ import annotations

import shutil

import pytest
from conftest import CONF, PROJECT
from mlflow import MlflowClient
from pyspark.sql import functions as F

from lakehouse import io
from lakehouse.catalog import AUDIT_LOG, COHORT_ATTRITION, TIMELINE, cohort_table, features_table, predictions_table
from lakehouse.gold.timeline import ADMISSION
from lakehouse.ml import tracking
from lakehouse.notebooks import checks, execute

pytestmark = pytest.mark.e2e
NOTEBOOKS = {p.stem: p for p in sorted((PROJECT / "notebooks").glob("*.ipynb"))}
TASK = "readmission_30d"


def _champion(settings) -> str:
    """The registry's champion of the task, read from the alias itself."""
    tracking.configure(settings)
    return str(MlflowClient().get_model_version_by_alias(settings.tasks[TASK].model_name, "champion").version)


@pytest.fixture(scope="module")
def lab(region, tmp_path_factory):
    """A copy of the region's root for the notebooks, and a runner that executes each notebook once."""
    root = tmp_path_factory.mktemp("notebooks") / "root"
    shutil.copytree(region.settings.root, root)
    settings = region.settings.model_copy(update={"root": str(root)})
    done: dict[str, dict] = {}

    def run(name: str) -> dict:
        if name not in done:
            env = {"LAKEHOUSE_CONF_DIR": str(CONF), "LAKEHOUSE_ENV": "local", "LAKEHOUSE_ROOT": str(root)}
            done[name] = checks(execute(NOTEBOOKS[name], root.parent / "executed", env))
        return done[name]

    yield settings, run
    tracking.configure(region.settings)  # this module's checks pointed MLflow at the copy's store


def test_region_tour_counts_every_table_and_every_hospital(spark, lab):
    settings, run = lab
    found = run("01_region_tour")
    now = {ref.qualified: io.read(spark, ref, settings.root).count() for ref in io.list_tables(spark, settings.root)}
    # the audit log grew after the count: the tour's own reads of quality results and quarantine are audited
    assert found["tables"].pop(AUDIT_LOG.qualified) < now.pop(AUDIT_LOG.qualified)
    assert found["tables"] == now
    assert found["hospitals"] == sorted(settings.sources)
    assert 0.5 < found["lowest_pass_rate"] < 1.0  # the generator plants defects at every hospital
    # the latest refine's results: every rule and table check of a table, for each hospital it checked
    configured = {table: len(conf.rules) + len(conf.checks) for table, conf in settings.dq.items()}
    checked = {key.split("/")[0] for key in found["rules"]}
    assert checked == {table for table, n in configured.items() if n}
    assert {key: n for key, n in found["rules"].items() if n != configured[key.split("/")[0]]} == {}


def test_person_timeline_shows_one_person_seen_at_two_hospitals(spark, lab):
    settings, run = lab
    found = run("02_person_timeline")
    events = io.read(spark, TIMELINE, settings.root).where(F.col("person_key") == found["person_key"])
    assert found["events"] == events.count()
    assert len(found["hospitals"]) >= 2
    assert found["hospitals"] == sorted(r.hospital_id for r in events.select("hospital_id").distinct().collect()
                                        if r.hospital_id)
    assert found["stays"] == events.where(F.col("code") == ADMISSION).count()


def test_cohort_notebook_builds_the_cohort_and_tries_a_draft(spark, lab):
    settings, run = lab
    found = run("03_cohort_from_yaml")
    name = "diabetes_inpatients"
    attrition = io.read(spark, COHORT_ATTRITION, settings.root).where(F.col("cohort") == name).orderBy("step")
    assert found["attrition"] == [[r.criterion, r.persons] for r in attrition.collect()]
    members = io.read(spark, cohort_table(name), settings.root)
    assert found["members"] == members.count() == found["attrition"][-1][1] > 0
    assert found["hba1c_points"] == members.select(F.explode(F.col("series")["hba1c"])).count() > 0
    draft = dict(found["draft_attrition"])
    assert list(draft) == ["index event", "aged_65_plus", "diabetes_diagnosis", "first per person"]
    assert 0 < draft["first per person"] <= draft["aged_65_plus"] < draft["index event"]
    assert draft["diabetes_diagnosis"] < dict(found["attrition"])["diabetes_diagnosis"]


def test_training_notebook_compares_runs_per_hospital(lab):
    settings, run = lab
    found = run("04_train_and_compare")
    assert set(found["models"]) == {f"{TASK}-logistic_regression", f"{TASK}-gbt"}
    assert found["validation_runs"] >= 2
    assert found["hospitals"] == sorted(settings.sources)
    assert str(found["champion"]) == _champion(settings)


def test_scoring_notebook_reads_the_champions_predictions(spark, lab):
    settings, run = lab
    found = run("05_score_and_predictions")
    champion = _champion(settings)
    predictions = io.read(spark, predictions_table(TASK), settings.root).where(F.col("model_version") == champion)
    assert found["champion"] == champion
    assert found["predictions"] == predictions.count() > 0
    assert found["deciles"] == 10
    features = io.read(spark, features_table(TASK), settings.root)
    assert found["labelled"] == features.where(F.col("label").isNotNull()).count()
