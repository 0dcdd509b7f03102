"""The region generator, checked by code that does not share the generator's writers.

Files are decoded, split and parsed here with the standard library, the `hl7` package and the
shipped source contracts; every planted defect is looked up at its file and line and recognised
from the bytes alone.
"""

from __future__ import annotations

import base64
import csv
import datetime as dt
import fnmatch
import functools
import gzip
import hashlib
import io
import json
from pathlib import Path

import hl7
import pandas as pd
import pytest
import yaml
from conftest import CONF
from sklearn.metrics import roc_auc_score

from lakehouse.cli import main
from lakehouse.errors import UsageError
from lakehouse.synth.generator import generate, read_truth
from lakehouse.synth.people import valid_national_id

RATE = 0.005
FIELDS_OF_ALL = ("patient", "encounter", "diagnosis", "procedure", "lab_result", "vital_sign", "medication",
                 "imaging_report", "note")
FHIR_TYPES = {"patient": "Patient", "encounter": "Encounter", "diagnosis": "Condition", "procedure": "Procedure",
              "lab_result": "Observation", "vital_sign": "Observation", "medication": "MedicationRequest",
              "imaging_report": "DiagnosticReport", "note": "DocumentReference"}
ENCODING = {"H01": "utf-8", "H02": "gb18030", "H03": "utf-8", "H04": "utf-8"}
DELIMITER = {"H01": ",", "H02": "\t", "H03": "|", "H04": ","}


@pytest.fixture(scope="module")
def region(tmp_path_factory):
    """Five hospitals (every dialect), two days, small blocks so the region spans several of them."""
    return generate(tmp_path_factory.mktemp("gen") / "out", hospitals=5, patients=1500, days=2, seed=3,
                    block_size=600)


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@functools.cache  # a file holds many planted defects: read and decompress it once
def _raw_lines(path: Path) -> list[bytes]:
    data = path.read_bytes()
    if path.suffix == ".gz":
        data = gzip.decompress(data)
    if path.suffix == ".hl7":
        return [s for s in data.replace(b"\r\n", b"\r").split(b"\r") if s]
    return data.split(b"\n")[:-1]


@functools.cache
def _contract(hospital: str, entity: str) -> dict:
    return yaml.safe_load((CONF / "sources" / f"{hospital.lower()}.yaml").read_text("utf-8"))["entities"][entity]


def test_same_seed_gives_the_same_bytes_at_any_parallelism(region, tmp_path):
    options = dict(hospitals=5, patients=1500, days=2, seed=3, block_size=600)
    parallel = generate(tmp_path / "parallel", workers=2, **options)
    assert _digest(parallel.out) == _digest(region.out)
    other = generate(tmp_path / "other", **{**options, "seed": 4})
    assert _digest(other.out) != _digest(region.out)


def test_each_dialect_is_what_it_claims(region):
    files = sorted(p for p in region.landing.rglob("*") if p.is_file() and p.stat().st_size
                   and p.name != "export-manifest.txt")  # the planted unmatched file is no export
    seen_formats = set()
    for path in files:
        hospital, entity = path.parts[-3], path.name.split("-")[0]
        if path.name.startswith("patient-truncated"):
            continue
        if hospital == "H05":
            assert path.suffix == ".ndjson"
            kinds = {json.loads(line)["resourceType"] for line in _raw_lines(path) if _is_json(line)}
            assert kinds == {FHIR_TYPES[entity]}, path
            seen_formats.add("fhir")
        elif path.suffix == ".hl7":
            text = path.read_bytes().decode("utf-8").replace("\r\n", "\r")
            messages = [m for m in text.split("\rMSH|") if m]
            parsed = hl7.parse("MSH|" + messages[1] if len(messages) > 1 else text)
            assert [str(s[0]) for s in parsed][:4] == ["MSH", "PID", "PV1", "OBR"]
            assert str(parsed.segment("MSH")[9]) == "ORU^R01^ORU_R01"
            seen_formats.add("hl7")
        else:
            raw = path.read_bytes()
            if path.suffix == ".gz":
                raw = gzip.decompress(raw)
                seen_formats.add("gzip")
            assert raw.startswith(b"\xef\xbb\xbf") == (hospital == "H03")
            header = raw.split(b"\n")[0].decode(ENCODING[hospital]).lstrip("\ufeff").split(DELIMITER[hospital])
            contract = _contract(hospital, entity)
            assert header[: len(contract["columns"])] == list(contract["columns"].values()), path
            seen_formats.add(f"csv-{ENCODING[hospital]}")
    assert seen_formats == {"fhir", "hl7", "gzip", "csv-utf-8", "csv-gb18030"}


def test_hl7_escape_sequences_round_trip(region):
    path = max(region.landing.glob("H04/*/lab_result-*.hl7"), key=lambda p: p.stat().st_size)
    text = path.read_bytes().decode("utf-8")
    assert "\\S\\" in text and "\\T\\" in text  # '^' and '&' inside test names are escaped
    message = hl7.parse(text.replace("\r\n", "\r").split("\rMSH|")[0])
    names = {message.unescape(str(obx[3][0][1])) for obx in message.segments("OBX") if len(obx) > 3}
    assert names, "no OBX test names parsed"


def _is_json(line: bytes) -> bool:
    try:
        json.loads(line)
        return True
    except ValueError:
        return False


def _fields(line: bytes, hospital: str) -> list[str]:
    return line.decode(ENCODING[hospital], errors="replace").lstrip("\ufeff").split(DELIMITER[hospital])


def _parses(value: str, hospital: str, entity: str, field: str) -> bool:
    if hospital == "H05":
        try:
            dt.datetime.fromisoformat(value)
            return True
        except ValueError:
            return False
    if hospital == "H04":
        return value.isdigit() and len(value) in (13, 14)  # epoch milliseconds, or an HL7 timestamp
    fmt = _contract(hospital, entity)["date_format" if field == "birth_date" else "timestamp_format"]
    python = (fmt.replace("yyyy", "%Y").replace("MM", "%m").replace("dd", "%d").replace("HH", "%H")
              .replace("mm", "%M").replace("ss", "%S"))
    try:
        dt.datetime.strptime(value, python)
        return True
    except ValueError:
        return False


TIME_FIELD = {"patient": "updated_at", "encounter": "admit_time", "diagnosis": "diagnosis_time",
              "procedure": "procedure_time", "lab_result": "result_time", "vital_sign": "measured_at",
              "medication": "start_time", "imaging_report": "report_time", "note": "note_time"}


def test_every_planted_defect_is_at_its_file_and_line(region):
    defects = read_truth(region.truth, "defects")
    assert set(defects["kind"]) >= {"exact_duplicate", "truncated_line", "wrong_encoding_line", "invalid_json",
                                    "malformed_segment", "unparseable_date", "impossible_value", "unknown_code",
                                    "missing_required", "orphan", "empty_file", "truncated_gzip", "schema_drift",
                                    "unmatched_file"}
    encounters = _all_encounter_ids(region.landing)
    checked = 0
    for row in defects.itertuples():
        path, line, hospital = region.landing / row.file, int(row.line), row.hospital_id
        if row.kind == "empty_file":
            assert path.stat().st_size == 0
            continue
        if row.kind == "unmatched_file":
            contract = yaml.safe_load((CONF / "sources" / f"{hospital.lower()}.yaml").read_text(encoding="utf-8"))
            assert not any(fnmatch.fnmatch(path.name, e["pattern"]) for e in contract["entities"].values())
            continue
        if row.kind == "truncated_gzip":
            with pytest.raises((EOFError, OSError)):
                gzip.decompress(path.read_bytes())
            continue
        lines = _raw_lines(path)
        if row.kind == "schema_drift":
            header = _fields(lines[0], hospital)
            assert len(header) == len(_contract(hospital, row.entity)["columns"]) + 1
            continue
        text = lines[line - 1]
        if path.suffix == ".hl7" and row.kind not in ("exact_duplicate", "malformed_segment"):
            checked += 1
            pv1 = next(seg for seg in reversed(lines[: line - 1]) if seg.startswith(b"PV1|"))
            assert _recognised_obx(row, text, pv1), (row, text)
            continue
        checked += 1
        assert _recognised(row, text, lines, hospital, encounters), (row, text[:200])
    assert checked > 500


def _recognised(row, text: bytes, lines: list[bytes], hospital: str, encounters: set[str]) -> bool:
    kind = row.kind
    if kind == "exact_duplicate":
        return text == lines[int(row.line) - 2]
    if kind == "truncated_line":
        return len(_fields(text, hospital)) < len(_fields(lines[0], hospital))
    if kind == "wrong_encoding_line":
        if ENCODING[hospital] == "utf-8":
            try:
                text.decode("utf-8")
                return False
            except UnicodeDecodeError:
                return True
        return not text.isascii() and text.decode("utf-8", errors="strict") is not None
    if kind == "invalid_json":
        return not _is_json(text)
    if kind == "malformed_segment":
        return text.startswith(b"OBX|") and len(text.split(b"|")) < 6
    record = _record(text, lines[0], hospital, row.entity)
    if kind == "missing_required":
        return record["id"] in ("", None)
    if kind == "unparseable_date":
        return not _parses(record["time"], hospital, row.entity, TIME_FIELD[row.entity])
    if kind == "orphan":
        return record["encounter_id"] not in encounters and record["encounter_id"].startswith("NOSUCH")
    if kind == "unknown_code":
        return record["code"].startswith("ZZ")
    if kind == "impossible_value":
        return _impossible(record, row.entity, hospital)
    raise AssertionError(f"unchecked kind {kind}")


def _recognised_obx(row, segment: bytes, pv1: bytes) -> bool:
    """A value defect in an OBX segment (fields: 3 test, 5 value, 14 time, 18 result id, 19 update time)."""
    fields = segment.decode("utf-8").split("|")
    assert fields[0] == "OBX"
    kind = row.kind
    if kind == "missing_required":
        return fields[18] == ""
    if kind == "unknown_code":
        return fields[3].startswith("ZZ")
    if kind == "impossible_value":
        return float(fields[5]) < 0
    if kind == "unparseable_date":
        return not (fields[14].isdigit() and len(fields[14]) == 14)
    if kind == "orphan":  # the visit number (PV1-19) of the message names no encounter
        return pv1.decode("utf-8").split("|")[19].startswith("NOSUCH")
    raise AssertionError(kind)


def _record(text: bytes, header: bytes, hospital: str, entity: str) -> dict:
    """The few fields the checks need, read the way a consumer would read the file."""
    if hospital == "H05":
        resource = json.loads(text)
        code = resource.get("code", {}).get("coding", [{}])[0].get("code", "")
        if entity == "medication":
            code = resource["medicationCodeableConcept"]["coding"][0]["code"]
        time = {"Patient": resource.get("meta", {}).get("lastUpdated"), "Encounter": resource.get("period", {}).get(
            "start"), "Condition": resource.get("recordedDate"), "Procedure": resource.get("performedDateTime"),
            "Observation": resource.get("effectiveDateTime"), "MedicationRequest": resource.get("authoredOn"),
            "DiagnosticReport": resource.get("effectiveDateTime"), "DocumentReference": resource.get("date")}
        value = resource.get("valueQuantity", {}).get("value")
        return {"id": resource.get("id") if entity != "patient" else resource["identifier"][0]["value"],
                "time": time[resource["resourceType"]] or "", "code": code,
                "encounter_id": resource.get("encounter", resource.get("context", {}).get("encounter", [{}])[0]
                                             if entity == "note" else {}).get("reference", "/").split("/")[-1],
                "value": value, "birth_date": resource.get("birthDate", ""),
                "admit": resource.get("period", {}).get("start"), "discharge": resource.get("period", {}).get("end"),
                "measure": code}
    contract = _contract(hospital, entity)["columns"]
    names = _fields(header, hospital)
    values = dict(zip(names, _fields(text, hospital), strict=False))
    get = lambda field: values.get(contract.get(field, "?"), "")  # noqa: E731
    id_field = {"patient": "mrn", "encounter": "encounter_id", "diagnosis": "diagnosis_id",
                "procedure": "procedure_id", "lab_result": "result_id", "vital_sign": "vital_id",
                "medication": "order_id", "imaging_report": "report_id", "note": "note_id"}[entity]
    code_field = {"lab_result": "test_code", "vital_sign": "measure_code", "medication": "drug_code",
                  "diagnosis": "icd_code", "procedure": "procedure_code"}.get(entity, id_field)
    return {"id": get("mrn") if entity == "patient" else get(id_field), "time": get(TIME_FIELD[entity]),
            "code": get(code_field), "encounter_id": get("encounter_id"), "value": get("value"),
            "birth_date": get("birth_date"), "admit": get("admit_time"), "discharge": get("discharge_time"),
            "measure": get("measure_code")}


def _impossible(record: dict, entity: str, hospital: str) -> bool:
    if entity == "patient":
        return "2099" in str(record["birth_date"])
    if entity == "encounter":
        admit, discharge = record["admit"], record["discharge"]
        if hospital in ("H04",):
            return int(discharge) < int(admit)
        return discharge < admit if hospital != "H05" else dt.datetime.fromisoformat(discharge) < \
            dt.datetime.fromisoformat(admit)
    value = float(record["value"])
    if entity == "lab_result":
        return value < 0
    code = record["measure"]
    spo2, temperature, pulse = code.endswith("SPO2") or code == "59408-5", code.endswith("T") or code == "8310-5", \
        code.endswith("P") or code == "8867-4"
    return value < 0 or (spo2 and value > 100) or (temperature and value >= 45) or (pulse and value > 300)


def _all_encounter_ids(landing: Path) -> set[str]:
    ids = set()
    for path in landing.rglob("encounter-*"):
        for line in _raw_lines(path)[1:]:
            ids.add(line.split(b",")[0].split(b"\t")[0].split(b"|")[0].decode("utf-8", "replace"))
    return ids


def test_defect_counts_follow_the_configured_rate(region):
    """Each kind is planted on about `RATE` of the rows it can apply to (Poisson tolerance)."""
    counts = read_truth(region.truth, "defects").groupby("kind").size()
    rows = region.rows_by_hospital  # hospital -> entity -> rows
    csv_hospitals, every = ("H01", "H02", "H03", "H04"), ("H01", "H02", "H03", "H04", "H05")
    applies = {  # kind -> (hospitals, entities) it can be planted in
        "unparseable_date": (every, set(FIELDS_OF_ALL)),
        "missing_required": (every, set(FIELDS_OF_ALL)),
        "impossible_value": (every, {"lab_result", "vital_sign", "patient"}),
        "unknown_code": (every, {"lab_result", "vital_sign", "medication", "diagnosis", "procedure"}),
        "orphan": (every, set(FIELDS_OF_ALL) - {"patient", "encounter"}),
        "exact_duplicate": (every, set(FIELDS_OF_ALL)),
        "truncated_line": (csv_hospitals, set(FIELDS_OF_ALL)),
        "invalid_json": (("H05",), set(FIELDS_OF_ALL)),
        "malformed_segment": (("H04",), {"lab_result"}),
    }
    for kind, (hospitals, entities) in applies.items():
        eligible = sum(n for h in hospitals for e, n in rows.get(h, {}).items() if e in entities
                       and not (h == "H04" and e == "lab_result" and kind == "truncated_line"))
        expected = RATE * eligible
        tolerance = 4 * expected**0.5 + 0.1 * expected + 2  # Poisson noise, and kinds drawn after others
        assert abs(counts[kind] - expected) <= tolerance, (kind, counts[kind], round(expected))
    assert counts["wrong_encoding_line"] > 0.5 * RATE * sum(rows[h][e] for h in ("H01", "H02", "H03") for e in rows[h])
    for kind in ("empty_file", "truncated_gzip", "schema_drift", "unmatched_file"):
        assert counts[kind] == 1


def test_identity_ground_truth_matches_the_defaults(region):
    records = read_truth(region.truth, "patient_records")
    persons = read_truth(region.truth, "persons")
    assert records["national_id"].map(lambda v: v == "" or len(v) == 18).all()
    true_ids = persons.set_index("person_id")["national_id"]
    assert true_ids.map(valid_national_id).all()
    anchors = persons[persons["hard_negative_of"] == "-1"]
    multi = records[records["person_id"].isin(anchors["person_id"])].groupby("person_id")["hospital_id"].nunique()
    assert 0.25 < (multi > 1).mean() < 0.35
    assert 0.005 < (persons["hard_negative_of"] != "-1").mean() < 0.02
    secondary = records[records["primary"] == "False"]
    for kind in ("name_typo", "id_missing", "id_mistyped", "dob_swap", "phone_changed"):
        share = secondary["noise"].str.contains(kind).mean()
        assert 0.02 < share < 0.09, (kind, share)
    mistyped = secondary[secondary["noise"].str.contains("id_mistyped")]
    assert not mistyped["national_id"].map(valid_national_id).any()


def test_notes_carry_the_planted_identifiers(region):
    identifiers = read_truth(region.truth, "note_identifiers")
    texts = {}
    for path in region.landing.glob("H05/*/note-*.ndjson"):
        for line in _raw_lines(path):
            if _is_json(line):
                doc = json.loads(line)
                texts[doc["id"]] = base64.b64decode(doc["content"][0]["attachment"]["data"]).decode("utf-8")
    h05 = identifiers[identifiers["hospital_id"] == "H05"]
    found = h05[h05["note_id"].isin(texts)]
    assert len(found) > 100
    assert all(value in texts[note] for note, value in zip(found["note_id"], found["value"], strict=True))
    assert set(found["kind"]) == {"name", "national_id", "phone", "mrn", "relative_name"}


def test_bad_arguments_are_refused(region, tmp_path, capsys):
    with pytest.raises(UsageError, match="--patients must be a positive number"):
        generate(tmp_path / "x", patients=-1)
    with pytest.raises(UsageError, match="unknown dialect"):
        generate(tmp_path / "y", hospitals=1, dialects=("klingon",))
    with pytest.raises(UsageError, match="not enough disk"):
        generate(tmp_path / "z", patients=10**12)
    assert main(["generate", "--out", str(region.out), "--root", str(tmp_path / "r")]) == 2
    assert "not empty" in capsys.readouterr().err


def test_planted_outcomes_carry_the_documented_signal(tmp_path):
    """At the defaults (3,000 persons), the true probabilities' AUROC against the outcomes as the data
    shows them: the ceiling for any model (between 0.75 and 0.90)."""
    result = generate(tmp_path / "default", seed=42)
    outcomes = read_truth(result.truth, "outcomes")
    for column in ("admit_time", "discharge_time"):
        outcomes[column] = pd.to_datetime(outcomes[column])
    end = pd.Timestamp("2026-01-01")
    stays = outcomes.sort_values("admit_time")
    admissions = stays.groupby("person_id")["admit_time"].apply(list).to_dict()
    alive = stays[(stays["died"] == "False") & (stays["discharge_time"] <= end - pd.Timedelta(days=30))]
    label = [any(d < a <= d + pd.Timedelta(days=30) for a in admissions[p])
             for p, d in zip(alive["person_id"], alive["discharge_time"], strict=True)]
    readmission_auroc = roc_auc_score(label, alive["readmission_probability"].astype(float))
    long_stays = stays[stays["mortality_probability"] != ""]
    mortality_auroc = roc_auc_score(long_stays["died"] == "True", long_stays["mortality_probability"].astype(float))
    print(f"ceiling AUROC: readmission {readmission_auroc:.3f} on {len(alive)} discharges, "
          f"in-hospital mortality {mortality_auroc:.3f} on {len(long_stays)} stays")
    assert 0.75 <= readmission_auroc <= 0.90
    assert 0.75 <= mortality_auroc <= 0.95
    assert sum(label) >= 200 and (long_stays["died"] == "True").sum() >= 50


def test_csv_lines_have_one_record_each(region):
    """No free text breaks a CSV line: every line of a clean file has the header's field count."""
    defects = read_truth(region.truth, "defects")
    broken = set(zip(defects["file"], defects["line"].astype(int), strict=True))
    for path in region.landing.glob("H0[1-3]/*/*-b*.*sv"):
        lines = _raw_lines(path)
        width = len(_fields(lines[0], path.parts[-3]))
        relative = "/".join(path.parts[-3:])
        for number, line in enumerate(lines[1:], start=2):
            if (relative, number) not in broken:
                assert len(_fields(line, path.parts[-3])) == width, (relative, number)


def test_reads_as_csv_with_the_standard_library(region):
    path = max(region.landing.glob("H02/*/patient-*.tsv"), key=lambda p: p.stat().st_size)
    rows = list(csv.reader(io.StringIO(path.read_bytes().decode("gb18030", errors="replace")), delimiter="\t"))
    assert rows[0][:2] == ["病案号", "姓名"] and len(rows) > 50


def test_truth_gives_the_standard_code_and_value_behind_every_local_one(region):
    codes = read_truth(region.truth, "codes")
    assert set(codes["entity"]) == {"diagnosis", "procedure", "medication", "vital_sign"}
    h02 = codes.query("hospital_id == 'H02' and entity == 'diagnosis'")
    assert (h02["local_code"] == h02["code"].str.replace(".", "", regex=False)).all()  # E11.9 sent as E119
    labs = read_truth(region.truth, "lab_values")
    assert labs["loinc_code"].str.match(r"^\d+-\d$").all() and labs["value"].astype(float).notna().all()
    # every clean vital-sign row of H01 carries the local code and value the truth says
    broken = set(read_truth(region.truth, "defects")["record_id"])
    truth = codes.query("hospital_id == 'H01' and entity == 'vital_sign'").set_index("record_id")
    path = max(region.landing.glob("H01/*/vital_sign-*.csv"), key=lambda p: p.stat().st_size)
    column = _contract("H01", "vital_sign")["columns"]
    rows = list(csv.DictReader(io.StringIO(path.read_text("utf-8", errors="replace"))))
    clean = [r for r in rows if r[column["vital_id"]] not in broken and r[column["vital_id"]] in truth.index]
    assert len(clean) > 1000
    assert all(truth.loc[r[column["vital_id"]], "local_code"] == r[column["measure_code"]]
               and float(truth.loc[r[column["vital_id"]], "value"]) == float(r[column["value"]]) for r in clean)
