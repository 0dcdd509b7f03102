"""Bronze: the generator's ground truth, incremental ingest, a new dialect by contract only, quarantine
thresholds, validate-source, and HL7 field access."""

from __future__ import annotations

import json
import shutil

import pytest
from chispa import assert_df_equality
from conftest import CONF
from pyspark.sql import functions as F

from lakehouse import io
from lakehouse.bronze import hl7
from lakehouse.bronze.ingest import ingest
from lakehouse.catalog import BRONZE, INGEST_LEDGER, JOB_RUN, QUARANTINE
from lakehouse.cli import main
from lakehouse.config import load_settings
from lakehouse.synth.generator import read_truth

LINE_DEFECTS = {"truncated_line": "malformed line: ", "wrong_encoding_line": "wrong encoding: ",
                "malformed_segment": "malformed OBX segment: OBX-18 (result_id) absent",
                "invalid_json": "invalid JSON"}


def _relative(path: str) -> str:
    return path.split("/landing/", 1)[1]


def test_every_planted_bronze_defect_is_quarantined_or_ledgered_with_its_reason(spark, region):
    root = region.settings.root
    truth = read_truth(region.truth, "defects")
    planted = {(r.file, int(r.line)): r.kind for r in truth[truth["kind"].isin(LINE_DEFECTS)].itertuples()}
    assert {kind for kind in planted.values()} == set(LINE_DEFECTS)
    found = {(_relative(r.source_file), r.source_line): r.reason
             for r in io.read(spark, QUARANTINE, root).where("layer = 'bronze'").collect()}
    assert set(found) == set(planted)  # every planted line, at its file and line, and nothing else
    assert all(found[key].startswith(LINE_DEFECTS[kind]) for key, kind in planted.items())

    ledger = {_relative(r.path): r for r in io.read(spark, INGEST_LEDGER, root).collect()}
    assert sorted(ledger) == sorted(str(p.relative_to(region.landing)) for p in region.landing.rglob("*")
                                    if p.is_file())
    refused = {r.file: r.kind for r in truth.itertuples() if r.kind in ("empty_file", "truncated_gzip",
                                                                          "unmatched_file")}
    assert {f: (ledger[f].status, ledger[f].rows_read) for f in refused} == {
        f: ("unmatched" if kind == "unmatched_file" else "failed", 0) for f, kind in refused.items()}
    reasons = {kind: ledger[f].reason for f, kind in refused.items()}
    assert reasons["empty_file"] == "empty file (0 bytes)"
    assert reasons["truncated_gzip"].startswith("unreadable: ")
    assert "matches no entity pattern" in reasons["unmatched_file"]
    landed = [r for r in ledger.values() if r.status == "landed"]
    assert len(landed) == len(ledger) - len(refused)
    assert all(r.rows_read == r.rows_landed + r.rows_quarantined for r in landed)
    assert sum(r.rows_quarantined for r in landed) == len(planted)

    # bronze holds every other line as received: rows generated + exact resent lines - quarantined lines
    counts = truth.groupby(["hospital_id", "entity", "kind"]).size()
    for entity, ref in BRONZE.items():
        got = dict(io.read(spark, ref, root).groupBy("_hospital_id").count().collect())
        expected = {h: rows.get(entity, 0) + counts.get((h, entity, "exact_duplicate"), 0)
                    - sum(counts.get((h, entity, kind), 0) for kind in LINE_DEFECTS)
                    for h, rows in region.generated.rows_by_hospital.items()}
        assert got == {h: n for h, n in expected.items() if n}, entity


def test_hl7_and_fhir_rows_carry_their_context_and_the_whole_record(spark, region):
    root = region.settings.root
    labs = io.read(spark, BRONZE["lab_result"], root)
    hl7_row = labs.where("_hospital_id = 'H04'").orderBy("_source_file", "_source_line").first()
    assert hl7_row._source_system == "LIS" and hl7_row._source_line >= 5  # MSH, PID, PV1, OBR, then OBX lines
    assert hl7_row.mrn.startswith("04") and hl7_row.encounter_id.startswith(hl7_row.mrn[:6])
    assert set(hl7_row._extra) == {"MSH", "PID", "PV1", "OBR", "OBX"} and hl7_row._extra["OBX"].startswith("OBX|")
    escaped = labs.where("_hospital_id = 'H04'").where(F.col("_extra")["OBX"].contains("\\S\\")).first()
    assert escaped is not None and "^" in escaped.test_name  # \S\ is read back as the component separator
    fhir = labs.where("_hospital_id = 'H05'").first()
    record = json.loads(fhir._extra["_record"])
    assert record["resourceType"] == "Observation" and fhir.result_id == record["id"]
    assert fhir.mrn == record["subject"]["reference"]  # as received; silver resolves "Patient/…"


def test_day_two_lands_only_new_files_a_rerun_changes_nothing_and_a_changed_file_is_a_new_version(
        spark, settings, region, tmp_path):
    landing, root = tmp_path / "landing", str(tmp_path / "root")
    local = settings.model_copy(update={"root": root})
    day1, day2 = sorted(p.name for p in (region.landing / "H04").iterdir())
    for hospital in ("H04", "H05"):  # HL7, gzip CSV and FHIR: cheaper than the whole region
        shutil.copytree(region.landing / hospital / day1, landing / hospital / day1)
    first = ingest(spark, local, str(landing), "batch-1")
    assert first.error is None and first.totals["files_landed"] == len(list(landing.rglob("*.*")))

    for hospital in ("H04", "H05"):
        shutil.copytree(region.landing / hospital / day2, landing / hospital / day2)
    second = ingest(spark, local, str(landing), "batch-2")
    assert second.files_skipped == first.totals["files_new"]
    new_files = {str(p.relative_to(landing)) for p in landing.rglob("*") if p.is_file() and day2 in str(p)}
    assert {_relative(row[0]) for row in second.ledger} == new_files
    bronze_day2 = [r._source_file for ref in BRONZE.values() if io.exists(spark, ref, root)
                   for r in io.read(spark, ref, root).where("_batch_id = 'batch-2'").select("_source_file")
                   .distinct().collect()]
    assert bronze_day2 and all(day2 in f for f in bronze_day2)

    versions = {ref.qualified: io.latest_version(spark, ref, root) for ref in (*BRONZE.values(), QUARANTINE,
                                                                              INGEST_LEDGER)}
    third = ingest(spark, local, str(landing), "batch-3")
    assert third.ledger == [] and third.written == [] and third.error is None
    assert versions == {ref.qualified: io.latest_version(spark, ref, root) for ref in (*BRONZE.values(),
                                                                                      QUARANTINE, INGEST_LEDGER)}

    resent = landing / "H05" / day2 / "encounter-b0000.ndjson"
    lines = resent.read_text(encoding="utf-8").splitlines()
    resent.write_text("\n".join([*lines, lines[0]]) + "\n", encoding="utf-8")  # the export was re-cut
    fourth = ingest(spark, local, str(landing), "batch-4")
    (row,) = fourth.ledger
    assert _relative(row[0]) == f"H05/{day2}/encounter-b0000.ndjson" and row[9] == "landed"
    assert row[6] == len(lines) + 1 and "new version of a file first seen in batch batch-2" in row[10]


H09_CONTRACT = """
hospital_id: H09
name: 第九医院 (a vendor the generator does not know)
quarantine_threshold: 0.3
entities:
  patient:
    pattern: "*_patients.jsonl"
    format: jsonl
    timestamp_format: "yyyy-MM-dd'T'HH:mm:ss"
    required: [mrn]
    columns:
      mrn: $.pat.no
      name: $.pat.name
      national_id: $.pat.ids[0]
      sex: $.pat.sex
      birth_date: $.pat.dob
      phone: ""
      address: $.addr.line
      updated_at: $.ts
  encounter:
    pattern: "*_visits.txt"
    format: csv
    encoding: GBK
    delimiter: ";"
    timestamp_format: "dd.MM.yyyy HH:mm"
    columns:
      encounter_id: 就诊号
      mrn: 病案号
      encounter_type: 类别
      admission_type: ""
      department: 科室
      ward: ""
      bed: ""
      admit_time: 入院
      discharge_time: 出院
      discharge_disposition: ""
      status: 状态
      updated_at: 入院
"""
PATIENTS = [{"pat": {"no": "P1", "name": "王五", "ids": ["110101199003070011"], "sex": "m", "dob": "1990-03-07"},
             "addr": {"line": "北京市"}, "ts": "2026-01-01T08:00:00", "vip": True},
            {"pat": {"no": "P2", "name": "李四", "ids": [], "sex": "f", "dob": "1985-12-01"},
             "ts": "2026-01-01T09:00:00"}]
VISITS = "就诊号;病案号;类别;科室;入院;出院;状态\r\nV1;P1;住院;心内科;01.01.2026 08:00;05.01.2026 10:00;正常\r\n"


def test_a_new_dialect_is_onboarded_by_a_contract_alone_and_quarantine_over_threshold_fails_the_run(
        spark, tmp_path, capsys):
    conf, landing, root = tmp_path / "conf", tmp_path / "landing", str(tmp_path / "root")
    shutil.copytree(CONF, conf)
    (tmp_path / ".cache").symlink_to(CONF.parent / ".cache")  # the jar cache, relative to the conf's project
    (conf / "sources" / "h09.yaml").write_text(H09_CONTRACT, encoding="utf-8")
    day = landing / "H09" / "2026-01-01"
    day.mkdir(parents=True)
    (day / "2026-01-01_patients.jsonl").write_text(
        "\n".join(json.dumps(p, ensure_ascii=False) for p in PATIENTS) + "\n", encoding="utf-8")
    (day / "2026-01-01_visits.txt").write_bytes(VISITS.encode("gbk"))
    common = ["--conf-dir", str(conf), "--root", root, "--landing", str(landing)]

    assert main(["validate-source", "--hospital", "H09", *common]) == 0
    captured = capsys.readouterr()
    assert "validate-source H09: PASS" in captured.out
    profiled = [json.loads(line) for line in captured.err.splitlines() if line.startswith('{"event": "step"')]
    assert [(e["stage"], e.get("item"), e.get("done"), e.get("total"), e.get("rows")) for e in profiled] == [
        ("list", "H09: 2 files to profile, 0 unmatched", None, None, None),
        ("profile", "encounter", 1, 2, 1), ("profile", "patient", 2, 2, 3)]
    assert main(["ingest", *common]) == 0
    captured = capsys.readouterr()
    assert "== ingest succeeded" in captured.out
    # not on a terminal, progress is JSON lines on stderr: files parsed per entity, tables written, the end
    events = [json.loads(line) for line in captured.err.splitlines() if line.startswith("{")]
    assert [(e["item"], e["done"], e["total"], e["unit"], e["rows"]) for e in events if e["event"] == "step"] == [
        ("encounter", 1, 2, "files", 1), ("patient", 2, 2, "files", 3)]
    wrote = {e["table"]: e["rows"] for e in events if e["event"] == "wrote"}
    assert wrote["bronze.patient"] == 2 and wrote["bronze.encounter"] == 1
    assert (events[0]["event"], events[-1]["event"], events[-1]["status"]) == ("start", "end", "succeeded")
    patients = io.read(spark, BRONZE["patient"], root).select("mrn", "name", "national_id", "sex", "phone", "address",
                                                             "_source_line", F.map_keys("_extra").alias("k"))
    expected = spark.createDataFrame(
        [("P1", "王五", "110101199003070011", "m", None, "北京市", 1, ["_record"]),
         ("P2", "李四", None, "f", None, None, 2, ["_record"])], patients.schema)
    assert_df_equality(patients, expected, ignore_row_order=True, ignore_nullable=True)
    visits = io.read(spark, BRONZE["encounter"], root).select("encounter_id", "mrn", "encounter_type", "admit_time",
                                                             "discharge_time", "ward", "_source_line")
    assert visits.collect() == [("V1", "P1", "住院", "01.01.2026 08:00", "05.01.2026 10:00", None, 2)]

    (day / "2026-01-02_patients.jsonl").write_text(
        '{"pat": {"no": "P3"}}\n{"pat": {"no": \n{"pat": {"name": "no number"}}\n', encoding="utf-8")
    assert main(["validate-source", "--hospital", "H09", *common]) == 1
    assert "2/6 records would be quarantined (33.33% > 30.00%)" in capsys.readouterr().out
    assert main(["ingest", *common]) == 3
    captured = capsys.readouterr()
    assert "quarantine over the contract's threshold for H09 2/3 rows" in captured.err
    assert "  what to do: read the reasons with `SELECT reason, count(*) FROM ops.quarantine" in captured.err
    assert "rows_quarantined=2" in captured.out and "== ingest failed" in captured.out
    reasons = {r.source_line: r.reason for r in io.read(spark, QUARANTINE, root).collect()}
    assert reasons == {2: "invalid JSON", 3: "required mrn absent ($.pat.no)"}
    (ledger,) = io.read(spark, INGEST_LEDGER, root).where(F.col("path").endswith("2026-01-02_patients.jsonl")).collect()
    assert (ledger.status, ledger.rows_read, ledger.rows_landed, ledger.rows_quarantined) == ("landed", 3, 1, 2)
    assert io.read(spark, JOB_RUN, root).where("job = 'ingest' AND status = 'failed'").count() == 1


def test_hl7_fields_repetitions_components_and_escapes(spark):
    frame = spark.createDataFrame([(
        "MSH|^~\\&|LIS|H04|LAKEHOUSE|REGION|20240101120000||ORU^R01|C1|P|2.5.1",
        "PID|1||M1^^^H04^MR~110101199003070011^^^CHN^NNCHN||王\\S\\五||19900307|M",
        "OBX|1|NM|GLU^Glu\\T\\葡萄糖^L||5.6|mmol/L|3.9-6.1",
        "A\rB\nC\r\nD\r\n",
    )], "msh STRING, pid STRING, obx STRING, message STRING")
    references = {"msh": ["MSH-1", "MSH-2", "MSH-3", "MSH-9.2", "MSH-10"],
                  "pid": ["PID-3[1].1", "PID-3[2].1", "PID-3[2].5", "PID-3[3].1", "PID-5", "PID-8", "PID-30"],
                  "obx": ["OBX-3.1", "OBX-3.2", "OBX-5", "OBX-7", "OBX-18"]}
    columns = [hl7.field(F.col(segment), ref).alias(ref) for segment, refs in references.items() for ref in refs]
    row = frame.select(*columns, hl7.segments("message").alias("segments"),
                       hl7.unescape(F.lit(r"a\E\F\E\b\F\c\R\d")).alias("escaped")).first()
    assert row.asDict() == {
        "MSH-1": "|", "MSH-2": "^~\\&", "MSH-3": "LIS", "MSH-9.2": "R01", "MSH-10": "C1",
        "PID-3[1].1": "M1", "PID-3[2].1": "110101199003070011", "PID-3[2].5": "NNCHN", "PID-3[3].1": None,
        "PID-5": "王^五", "PID-8": "M", "PID-30": None,
        "OBX-3.1": "GLU", "OBX-3.2": "Glu&葡萄糖", "OBX-5": "5.6", "OBX-7": "3.9-6.1", "OBX-18": None,
        "segments": ["A", "B", "C", "D"], "escaped": "a\\F\\b|c~d"}


@pytest.mark.parametrize("reference", ["PID3", "PID-0", "pid-3", "PID-3[0]", "PID-3.1.2.3"])
def test_bad_hl7_references_are_refused(reference):
    with pytest.raises(ValueError, match="not an HL7 field reference"):
        hl7.parse_reference(reference)


def test_shipped_contracts_cover_every_generated_dialect():
    settings = load_settings(CONF, "local", "/tmp/x")
    formats = {s.format for c in settings.sources.values() for s in c.entities.values()}
    assert formats == {"csv", "hl7v2", "fhir_ndjson"}
