"""Configuration is validated before Spark starts; errors name the file and the key."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from conftest import CONF

from lakehouse.cli import main
from lakehouse.config import load_settings
from lakehouse.errors import ConfigError
from lakehouse.silver.refine import refine


@pytest.fixture
def conf(tmp_path) -> Path:
    copy = tmp_path / "conf"
    shutil.copytree(CONF, copy)
    return copy


def _edit(file: Path, change) -> None:
    data = yaml.safe_load(file.read_text(encoding="utf-8"))
    change(data)
    file.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")


def test_shipped_configuration_loads_with_typed_values():
    settings = load_settings(CONF, "local", "/tmp/x")
    assert settings.main.spark.master == "local[2]"
    assert sorted(settings.sources) == ["H01", "H02", "H03", "H04", "H05"]
    assert settings.sources["H04"].entities["lab_result"].format == "hl7v2"
    assert settings.sources["H05"].entities["vital_sign"].match == {"$.category[0].coding[0].code": "vital-signs"}
    assert settings.sources["H04"].entities["encounter"].timestamp_format == "epoch_ms"
    assert settings.sources["H02"].entities["patient"].encoding == "GB18030"
    readmission, mortality = settings.tasks["readmission_30d"], settings.tasks["inhospital_mortality"]
    assert readmission.outcome.window_days == 30 and readmission.index.event == "inpatient_discharge"
    assert mortality.index.offset_hours == 24 and mortality.outcome.kind == "death_in_stay"
    assert [m.type for m in readmission.models] == ["logistic_regression", "gbt"]
    # feature names are derived from the feature sets and conf/features.yaml, in table order
    assert readmission.features[:4] == ("age", "sex_male", "stay_hours", "labs_glucose_count_30d")
    assert "vitals_spo2_min_24h" in mortality.features and "stay_hours" not in mortality.features
    assert "comorbidity_heart_failure" in mortality.features and "utilisation_admissions_365d" in mortality.features
    assert settings.root == "/tmp/x"


def test_overlay_overrides_base_and_root_precedence(conf, monkeypatch):
    cluster = load_settings(conf, "cluster")
    assert cluster.main.spark.master == "spark://127.0.0.1:7077"
    assert cluster.main.spark.app_name == "lakehouse"  # kept from base
    monkeypatch.setenv("LAKEHOUSE_ROOT", "/env/root")
    assert load_settings(conf, "local").root == "/env/root"
    assert load_settings(conf, "local", "/cli/root").root == "/cli/root"


@pytest.mark.parametrize(
    ("relative", "change", "key", "message"),
    [
        ("local/lakehouse.yaml", lambda d: d["spark"].update(masterr="x"), "spark.masterr", "unknown key"),
        ("local/lakehouse.yaml", lambda d: d["spark"].update(master="mesos://x"), "spark.master", "invalid master"),
        ("base/lakehouse.yaml", lambda d: d["spark"].update(shuffle_partitions="many"), "spark.shuffle_partitions",
         "integer"),
        ("sources/h01.yaml", lambda d: d["entities"]["patient"].update(encoding="klingon"),
         "entities.patient.encoding", "unknown encoding"),
        ("sources/h01.yaml", lambda d: d["entities"]["patient"]["columns"].pop("mrn"),
         "entities.patient.columns", "missing mapping"),
        ("sources/h02.yaml", lambda d: d["entities"]["lab_result"]["columns"].update(colour="颜色"),
         "entities.lab_result.columns.colour", "not a bronze column"),
        ("tasks/readmission_30d.yaml", lambda d: d["feature_sets"].append("shoe_size"), "feature_sets.6",
         "Input should be"),
        ("tasks/readmission_30d.yaml", lambda d: d["lookback"][0].update(end_hours=24), "lookback.0.end_hours",
         "less than or equal to 0"),
        ("tasks/readmission_30d.yaml", lambda d: d.update(features=["age"]), "features", "derived from feature_sets"),
        ("tasks/readmission_30d.yaml", lambda d: d["models"].reverse(), "models", "must be a logistic_regression"),
        ("tasks/inhospital_mortality.yaml", lambda d: d["outcome"].update(window_days=3), "outcome",
         "drop window_days"),
        ("tasks/readmission_30d.yaml", lambda d: d["eligibility"].update(cohort="nobody"), "eligibility.cohort",
         "no such cohort"),
        ("features.yaml", lambda d: d["labs"]["codes"].update(urea="UREA-1"), "labs.codes", "no code system"),
        ("sources/h04.yaml", lambda d: d["entities"]["lab_result"]["columns"].update(value="OBX5"),
         "entities.lab_result.columns.value", "not an HL7 field reference"),
        ("sources/h04.yaml", lambda d: d["entities"]["lab_result"].update(encoding="GB18030"),
         "entities.lab_result.encoding", "read as UTF-8 only"),
        ("sources/h05.yaml", lambda d: d["entities"]["patient"]["columns"].update(mrn="id"),
         "entities.patient.columns.mrn", "not a JSONPath"),
        ("sources/h05.yaml", lambda d: d["entities"]["patient"].pop("resource_type"),
         "entities.patient.resource_type", "required for format fhir_ndjson"),
        ("sources/h05.yaml", lambda d: d["entities"]["patient"]["columns"].update(mrn=""),
         "entities.patient.columns.mrn", "a required column must be mapped"),
        ("sources/h05.yaml", lambda d: d["entities"]["lab_result"].update(match={"category": "x"}),
         "entities.lab_result.match", "not a JSONPath"),
        ("sources/h05.yaml", lambda d: d["entities"]["note"].update(required=["colour"]),
         "entities.note.required.0", "not a bronze column"),
        ("sources/h01.yaml", lambda d: d["entities"]["note"].update(pattern="patient-*.csv"),
         "entities.patient.pattern", "only fhir_ndjson entities may share"),
        ("sources/h01.yaml", lambda d: d.update(quarantine_threshold=1.5), "quarantine_threshold",
         "less than or equal"),
        ("dq/lab_result.yaml", lambda d: d["rules"][0].update(action="delete"), "rules.0.action", "Input should be"),
        ("dq/lab_result.yaml", lambda d: d["rules"][1].update(category="timeliness"), "rules.1.category",
         "Input should be"),
        ("dq/person.yaml", lambda d: d["rules"][2].update(name="lab_code_mapped"), "rules.2.name",
         "also defined in"),
        ("dq/lab_result.yaml", lambda d: d["checks"][1].pop("references"), "checks.1.references",
         "required by, and only by, kind referential"),
        ("dq/note.yaml", lambda d: d.update(table="notes"), "table", "Input should be"),
        ("dq/vital_sign.yaml", lambda d: d["checks"][-1].update(columns=["measured_at", "updated_at"]),
         "checks.2.columns", "kind before_death takes one column"),
        ("cohorts/diabetes_inpatients.yaml", lambda d: d["inclusion"][1].update(codes=["SNOMED//44054006"]),
         "inclusion.1.codes", "unknown code system 'SNOMED'"),
        ("cohorts/diabetes_inpatients.yaml", lambda d: d["flags"][0]["window"].update(start_days=10, end_days=-10),
         "flags.0.window.end_days", "impossible window"),
        ("cohorts/diabetes_inpatients.yaml", lambda d: d["inclusion"][0].update(colour="red"), "inclusion.0.colour",
         "unknown key"),
        ("cohorts/diabetes_inpatients.yaml", lambda d: d["index"]["window"].update(relative_to="index"),
         "index.window", "counts from the as-of day"),
        ("cohorts/diabetes_inpatients.yaml", lambda d: d["inclusion"][0].update(codes=["ICD10//E11"]), "inclusion.0",
         "split it in two"),
        ("cohorts/heart_failure_admissions.yaml", lambda d: d["inclusion"][0].update(age={"min": 65, "max": 18}),
         "inclusion.0.age.max", "impossible range"),
        ("beds.yaml", lambda d: d["hospitals"].update(H99={"ICU": 8}), "hospitals.H99", "no source contract"),
        ("access.yaml", lambda d: d["roles"]["researcher"]["tables"].append("vault.*"), "roles.researcher",
         "vault, which is admin-only"),
        ("access.yaml", lambda d: d["roles"]["analyst"]["tables"].append("*"), "roles.analyst",
         "bronze, which is admin-only"),
        ("access.yaml", lambda d: d["roles"]["analyst"]["tables"].append("ops.audit_*"), "roles.analyst",
         "ops, which is admin-only"),
        ("access.yaml", lambda d: d["roles"]["analyst"].update(tables=["indicators"]), "roles.analyst.tables",
         "not a <layer>.<table> pattern"),
        ("access.yaml", lambda d: d["roles"]["clinician"].update(hospital="H01"), "roles.clinician.hospital",
         "unknown key"),
        ("base/lakehouse.yaml", lambda d: d.update(services={"sql": {"layers": ["gold", "ops"]}}),
         "services.sql.layers.1", "Input should be"),
        ("local/lakehouse.yaml", lambda d: d.update(services={"api": {"port": 70000}}), "services.api.port",
         "less than or equal to 65535"),
    ],
)
def test_bad_values_name_file_and_key(conf, relative, change, key, message):
    _edit(conf / relative, change)
    with pytest.raises(ConfigError) as caught:
        load_settings(conf, "local")
    assert caught.value.file == str(conf / relative)
    assert caught.value.key == key
    assert message in caught.value.message


def test_missing_files_and_folders_are_refused(conf, tmp_path):
    with pytest.raises(ConfigError, match="configuration folder not found"):
        load_settings(tmp_path / "nowhere", "local")
    with pytest.raises(ConfigError, match="unknown environment 'prod'"):
        load_settings(conf, "prod")
    (conf / "base" / "lakehouse.yaml").unlink()
    with pytest.raises(ConfigError, match="file not found"):
        load_settings(conf, "local")


def test_cli_refuses_bad_config_with_one_line_exit_2_and_writes_nothing(conf, tmp_path, capsys):
    _edit(conf / "local" / "lakehouse.yaml", lambda d: d["spark"].update(master="nonsense"))
    root = tmp_path / "root"
    assert main(["ingest", "--conf-dir", str(conf), "--root", str(root)]) == 2
    error, advice = capsys.readouterr().err.splitlines()[:2]
    assert error.startswith(f"error: config error in {conf / 'local' / 'lakehouse.yaml'}: key 'spark.master'")
    assert advice == (f"  what to do: fix 'spark.master' in {conf / 'local' / 'lakehouse.yaml'} and run the command "
                      "again; nothing was read or written")
    assert not root.exists()


def test_cli_refuses_missing_landing_folder_before_spark(tmp_path, capsys):
    root = tmp_path / "root"
    code = main(["ingest", "--conf-dir", str(CONF), "--root", str(root), "--landing", str(tmp_path / "absent")])
    assert code == 2
    assert "key '--landing': landing folder" in capsys.readouterr().err
    assert not root.exists()


def test_api_tokens_are_stored_hashed_and_checked_against_the_policy(conf, tmp_path, monkeypatch, capsys):
    from lakehouse import access

    tokens = tmp_path / "tokens.yaml"
    monkeypatch.setenv(access.TOKENS_ENV, str(tokens))
    settings = load_settings(conf, "local", str(tmp_path / "root"))
    assert main(["api-token", "--conf-dir", str(conf), "--name", "dr_li", "--role", "clinician",
                 "--hospital", "H01"]) == 0
    token = capsys.readouterr().out.splitlines()[1].strip()
    assert token not in tokens.read_text() and access.token_hash(token) in tokens.read_text()
    assert tokens.stat().st_mode & 0o777 == 0o600
    assert access.TokenBook(settings).get(token) == access.Principal("dr_li", "clinician", "H01")
    assert access.TokenBook(settings).get(token + "x") is None

    # a clinician needs a hospital, others must not have one; the role must exist
    for argv, message in ((["--role", "clinician"], "hospital-scoped"), (["--role", "janitor"], "unknown role"),
                          (["--role", "researcher", "--hospital", "H01"], "not hospital-scoped")):
        assert main(["api-token", "--conf-dir", str(conf), "--name", "x", *argv]) == 2
        assert message in capsys.readouterr().err
    # a hand-edited tokens file is refused before the API serves, naming the key
    _edit(tokens, lambda d: next(iter(d["tokens"].values())).update(role="superuser"))
    with pytest.raises(ConfigError) as caught:
        access.load_tokens(settings)
    assert caught.value.file == str(tokens) and caught.value.key.endswith(".role")
    assert main(["serve-api", "--conf-dir", str(conf), "--root", str(tmp_path / "root")]) == 2
    assert "unknown role 'superuser'" in capsys.readouterr().err


def test_the_servers_settings_do_not_change_the_configuration_hash(conf):
    """Jobs re-run when the configuration hash changes: a server's port or folder must not rebuild silver."""
    before = load_settings(conf, "local").config_hash
    _edit(conf / "local" / "lakehouse.yaml", lambda d: d.update(services={"api": {"port": 9000}}))
    assert load_settings(conf, "local").config_hash == before
    _edit(conf / "local" / "lakehouse.yaml", lambda d: d["spark"].update(shuffle_partitions=3))
    assert load_settings(conf, "local").config_hash != before


def test_a_refine_depends_on_the_rules_contracts_and_vocabularies_but_not_on_the_code_mappings(conf):
    """`refine_hash` decides a full refine: a code mapping is re-applied row by row (silver.remap), and a cohort's
    or a task's change is gold's business."""
    def hashes() -> tuple[str, str]:
        settings = load_settings(conf, "local")
        return settings.config_hash, settings.refine_hash

    seen = [hashes()]
    _edit(conf / "cohorts" / "diabetes_inpatients.yaml", lambda d: d.update(description="changed"))
    with (conf / "vocab" / "lab_codes.csv").open("a", encoding="utf-8") as codes:
        codes.write("H01,NEW1,2345-7,Glucose\n")
    (conf / "vocab" / "VERSION").write_text("2099.1.1\n")
    seen.append(hashes())
    assert seen[1][0] != seen[0][0] and seen[1][1] == seen[0][1]
    with (conf / "vocab" / "status.csv").open("a", encoding="utf-8") as statuses:
        statuses.write("H01,撤销,cancelled\n")
    seen.append(hashes())
    assert seen[2][0] != seen[1][0] and seen[2][1] != seen[1][1]


@pytest.mark.parametrize("file, line, message", [
    ("lab_codes.csv", "H01,GLU,2160-0,Creatinine", "hospital_id, local_code H01, GLU is on line"),
    ("icd10.csv", "E11.8,2型糖尿病", "name 2型糖尿病 is on line"),
    ("units.csv", "14749-6,mmol/L,mmol/L,2", "loinc_code, source_unit 14749-6, mmol/L is on line"),
])
def test_a_vocabulary_mapping_a_code_twice_is_refused_before_a_refine_touches_anything(spark, conf, tmp_path,
                                                                                      file, line, message):
    with (conf / "vocab" / file).open("a", encoding="utf-8") as vocabulary:
        vocabulary.write(line + "\n")
    lines = len((conf / "vocab" / file).read_text(encoding="utf-8").splitlines())
    settings = load_settings(conf, "local", str(tmp_path / "root"))
    with pytest.raises(ConfigError, match=message) as caught:
        refine(spark, settings, bytes(32), bytes(32))
    assert caught.value.file == str(conf / "vocab" / file) and caught.value.key == f"line {lines}"
    assert not (tmp_path / "root").exists()
