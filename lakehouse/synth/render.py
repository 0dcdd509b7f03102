"""Writers: one entity's rows (strings) as a hospital's CSV, HL7 v2 ORU^R01 batch or FHIR R4 NDJSON file.

Each writer plants the line-level defects it is given and returns the ground truth of every
planted defect as (line, kind, row position): the 1-based line of the file where it can be seen
(for HL7, the segment's line).
"""

from __future__ import annotations

import base64
import csv
import gzip
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd

from lakehouse.synth.dialects import Dialect, column_names

HL7_ESCAPES = (("\\", "\\E\\"), ("|", "\\F\\"), ("^", "\\S\\"), ("&", "\\T\\"), ("~", "\\R\\"))
SEGMENT_END = "\r\n"
DRIFT_COLUMN = {"en": "remark", "zh": "备注", "abbr": "RMK_TXT"}
FREE_TEXT = {"name", "address", "department", "ward", "diagnosis_name", "procedure_name", "test_name", "measure_name",
             "drug_name", "report_text", "note_text", "body_part", "reference_range"}


# strftime formats rendered from numpy's ISO text ("2025-01-02T03:04:05") with vectorized string edits
_FROM_ISO = {
    "%Y-%m-%d %H:%M:%S": (19, (("T", " "),)),
    "%Y/%m/%d %H:%M": (16, (("-", "/"), ("T", " "))),
    "%Y%m%d%H%M%S": (19, (("-", ""), ("T", ""), (":", ""))),
    "%Y-%m-%d": (10, ()),
    "%Y/%m/%d": (10, (("-", "/"),)),
    "%Y%m%d": (10, (("-", ""),)),
}


def format_times(values: pd.Series, dialect: Dialect | None = None, date_only: bool = False,
                 fmt: str | None = None) -> pd.Series:
    """Timestamps (local wall time) in the dialect's style; missing ones as empty strings."""
    values = pd.to_datetime(pd.Series(values))
    index = values.index
    values = values.reset_index(drop=True)
    fmt = fmt or (dialect.date if date_only else dialect.timestamp)
    missing = values.isna().to_numpy()
    if fmt == "epoch_ms":
        utc = (values - pd.Timedelta(hours=8)).to_numpy()  # China Standard Time, UTC+8, no daylight saving
        text = pd.Series(utc.astype("datetime64[ms]").astype("int64").astype(str))
    elif fmt == "iso":
        text = pd.Series(values.to_numpy().astype("datetime64[s]").astype(str)) + "+08:00"
    elif fmt in _FROM_ISO:
        width, edits = _FROM_ISO[fmt]
        text = pd.Series(np.char.ljust(values.to_numpy().astype("datetime64[s]").astype(str), 19)).str[:width]
        for old, new in edits:
            text = text.str.replace(old, new, regex=False)
    else:
        text = values.dt.strftime(fmt)
    return text.where(~missing, "").set_axis(index)


def _finish(path: Path, data: bytes, gzipped: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if gzipped:
        data = gzip.compress(data, compresslevel=6, mtime=0)  # mtime=0: same seed, same bytes
    path.write_bytes(data)


def write_csv(path: Path, frame: pd.DataFrame, entity: str, dialect: Dialect, line_defects: dict[int, str],
              drift: bool = False) -> list[tuple[int, str, int]]:
    names = column_names(dialect, entity)
    delimiter = dialect.delimiter
    frame = frame.copy()
    for column in sorted(FREE_TEXT.intersection(frame.columns)):  # free text never carries a delimiter or line break
        frame[column] = frame[column].astype(str).str.replace(f"[{re.escape(delimiter)}\r\n]", " ", regex=True)
    header = [names[c] for c in frame.columns]
    if drift:  # schema drift: a column appears that the contract has never seen
        header.append(DRIFT_COLUMN[dialect.column_style])
        frame["_drift"] = np.where(np.arange(len(frame)) % 7 == 0, "复核", "")
    body = frame.to_csv(sep=delimiter, header=False, index=False, quoting=csv.QUOTE_NONE, escapechar=None,
                        lineterminator="\n") if len(frame) else ""
    lines = [delimiter.join(header)] + body.split("\n")[:-1] if body else [delimiter.join(header)]
    encoding = "utf-8" if dialect.encoding == "utf-8-sig" else dialect.encoding
    other = "utf-8" if encoding == "gb18030" else "gb18030"
    out: list[str | bytes] = [lines[0]]
    truth = []
    for position, text in enumerate(lines[1:]):
        kind = line_defects.get(position)
        if kind == "wrong_encoding_line" and text.isascii():
            kind = None  # ASCII reads the same in every encoding: nothing would be wrong
        if kind == "truncated_line":
            text = text[: max(1, len(text) // 2)]
        out.append(text.encode(other) if kind == "wrong_encoding_line" else text)
        if kind == "exact_duplicate":
            out.append(text)
        if kind:
            truth.append((len(out), kind, position))
    data = _encode_lines(out, encoding)
    if dialect.encoding == "utf-8-sig":
        data = b"\xef\xbb\xbf" + data
    _finish(path, data, dialect.gzip)
    return truth


def _encode_lines(lines: list[str | bytes], encoding: str) -> bytes:
    """Join lines with LF, encoding runs of text at once; bytes (a wrong-encoding line) go in as they are."""
    parts, run = [], []
    for line in lines:
        if isinstance(line, bytes):
            if run:
                parts.append(("\n".join(run) + "\n").encode(encoding))
                run = []
            parts.append(line + b"\n")
        else:
            run.append(line)
    if run:
        parts.append(("\n".join(run) + "\n").encode(encoding))
    return b"".join(parts)


def hl7_escape(value: str) -> str:
    for raw, escaped in HL7_ESCAPES:
        value = value.replace(raw, escaped)
    return value


def write_hl7(path: Path, labs: pd.DataFrame, context: pd.DataFrame, hospital: str,
              line_defects: dict[int, str], line_of: dict[int, int] | None = None) -> list[tuple[int, str, int]]:
    """ORU^R01 messages, one per (encounter, report time), one OBX per result: MSH, PID, PV1, OBR, OBX...

    `line_of`, when given, is filled with each row's OBX line (segments are CRLF-terminated lines)."""
    segments: list[str] = []
    truth = []
    e = hl7_escape
    message_key = labs["encounter_id"] + "|" + labs["result_time"]
    for number, (_, group) in enumerate(labs.groupby(message_key.to_numpy(), sort=False)):
        first = group.iloc[0]
        ctx = context.loc[first.name]
        segments.extend([
            f"MSH|^~\\&|LIS|{hospital}|LAKEHOUSE|REGION|{first['result_time']}||ORU^R01^ORU_R01|"
            f"{hospital}{path.stem}{number:07d}|P|2.5.1|||||CHN|UNICODE UTF-8",
            f"PID|1||{e(first['mrn'])}^^^{hospital}^MR~{e(ctx['national_id'])}^^^CHN^NNCHN||{e(ctx['name'])}||"
            f"{ctx['birth_date']}|{ctx['sex']}|||{e(ctx['address'])}||{e(ctx['phone'])}",
            f"PV1|1|{ctx['patient_class']}|{e(ctx['ward'])}^^{e(ctx['bed'])}||||||||||||||||{e(first['encounter_id'])}",
            f"OBR|1|{e(first['result_id'])}||{e(first['test_code'])}^{e(first['test_name'])}^L|||"
            f"{first['result_time']}",
        ])
        for i, (position, lab) in enumerate(zip(group["_position"], group.itertuples(index=False), strict=True)):
            obx = (f"OBX|{i + 1}|NM|{e(lab.test_code)}^{e(lab.test_name)}^L||{e(lab.value)}|{e(lab.unit)}|"
                   f"{e(lab.reference_range)}|{e(lab.abnormal_flag)}|||{lab.status}|||{lab.result_time}||||"
                   f"{e(lab.result_id)}|{lab.updated_at}")
            kind = line_defects.get(position)
            if kind == "malformed_segment":
                obx = f"OBX|{i + 1}|NM|{e(lab.test_code)}"  # cut short: no value, no unit
            segments.append(obx)
            if line_of is not None:
                line_of[position] = len(segments)
            if kind == "exact_duplicate":
                segments.append(obx)
            if kind:
                truth.append((len(segments), kind, position))
    _finish(path, "".join(s + SEGMENT_END for s in segments).encode("utf-8"), False)
    return truth


def write_ndjson(path: Path, resources: list[tuple[int, dict]], line_defects: dict[int, str]) -> list:
    lines, truth = [], []
    for position, resource in resources:
        line = json.dumps(resource, ensure_ascii=False, separators=(",", ":"))
        kind = line_defects.get(position)
        if kind == "invalid_json":
            line = line[: len(line) // 2]
        lines.append(line)
        if kind == "exact_duplicate":
            lines.append(line)
        if kind:
            truth.append((len(lines), kind, position))
    _finish(path, ("\n".join(lines) + "\n").encode("utf-8"), False)
    return truth


def _number(value: str):
    try:
        return float(value) if value not in ("", None) else None
    except ValueError:
        return value


def _ref(kind: str, value: str) -> dict:
    return {"reference": f"{kind}/{value}"}


def fhir_resource(entity: str, row: dict, hospital: str) -> dict:
    """A FHIR R4 resource for one row of strings (field names as in dialects.FIELDS)."""
    meta = {"lastUpdated": row["updated_at"]}
    system = f"urn:lakehouse:{hospital}"
    if entity == "patient":
        identifiers = [{"system": f"{system}:mrn", "value": row["mrn"]}]
        if row["national_id"]:
            identifiers.append({"system": "urn:oid:2.16.156.10011.1.1", "value": row["national_id"]})
        return {"resourceType": "Patient", "id": row["mrn"] or "unknown", "meta": meta, "identifier": identifiers,
                "name": [{"text": row["name"]}], "gender": row["sex"], "birthDate": row["birth_date"],
                "telecom": [{"system": "phone", "value": row["phone"]}], "address": [{"text": row["address"]}]}
    subject, encounter = _ref("Patient", row["mrn"]), _ref("Encounter", row.get("encounter_id", ""))
    if entity == "encounter":
        classes = {"outpatient": "AMB", "inpatient": "IMP", "emergency": "EMER"}
        return {"resourceType": "Encounter", "id": row["encounter_id"], "meta": meta,
                "status": "entered-in-error" if row["status"] == "entered-in-error" else "finished",
                "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                          "code": classes.get(row["encounter_type"], row["encounter_type"])},
                "type": [{"text": row["department"]}], "subject": subject,
                "period": {"start": row["admit_time"], "end": row["discharge_time"] or None},
                "hospitalization": {"admitSource": {"text": row["admission_type"]},
                                    "dischargeDisposition": {"text": row["discharge_disposition"]}},
                "location": [{"location": {"display": f"{row['ward']} {row['bed']}".strip()}}]}
    if entity == "diagnosis":
        return {"resourceType": "Condition", "id": row["diagnosis_id"], "meta": meta, "subject": subject,
                "encounter": encounter,
                "verificationStatus": {"text": "entered-in-error" if row["status"] == "entered-in-error" else
                                       "confirmed"},
                "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": row["icd_code"],
                                     "display": row["diagnosis_name"]}]}, "recordedDate": row["diagnosis_time"]}
    if entity == "procedure":
        return {"resourceType": "Procedure", "id": row["procedure_id"], "meta": meta, "status": "completed",
                "subject": subject, "encounter": encounter,
                "code": {"coding": [{"system": "urn:oid:2.16.840.1.113883.6.104", "code": row["procedure_code"],
                                     "display": row["procedure_name"]}]},
                "performedDateTime": row["procedure_time"]}
    if entity in ("lab_result", "vital_sign"):
        lab = entity == "lab_result"
        key, code, name, time = (("result_id", "test_code", "test_name", "result_time") if lab
                                 else ("vital_id", "measure_code", "measure_name", "measured_at"))
        resource = {"resourceType": "Observation", "id": row[key], "meta": meta,
                    "status": row.get("status") or "final",
                    "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                              "code": "laboratory" if lab else "vital-signs"}]}],
                    "code": {"coding": [{"system": "http://loinc.org", "code": row[code], "display": row[name]}]},
                    "subject": subject, "encounter": encounter, "effectiveDateTime": row[time],
                    "valueQuantity": {"value": _number(row["value"]), "unit": row["unit"]}}
        if lab:
            resource["referenceRange"] = [{"text": row["reference_range"]}]
            resource["interpretation"] = [{"text": row["abnormal_flag"]}]
        return resource
    if entity == "medication":
        return {"resourceType": "MedicationRequest", "id": row["order_id"], "meta": meta,
                "status": "cancelled" if row["status"] == "entered-in-error" else "active", "intent": "order",
                "medicationCodeableConcept": {"coding": [{"system": f"{system}:drug", "code": row["drug_code"],
                                                          "display": row["drug_name"]}]},
                "subject": subject, "encounter": encounter, "authoredOn": row["start_time"],
                "dosageInstruction": [{"text": f"{row['dose']} {row['dose_unit']} {row['route']} {row['frequency']}",
                                       "route": {"text": row["route"]},
                                       "timing": {"code": {"text": row["frequency"]},
                                                  "repeat": {"boundsPeriod": {"start": row["start_time"],
                                                                              "end": row["end_time"]}}},
                                       "doseAndRate": [{"doseQuantity": {"value": _number(row["dose"]),
                                                                         "unit": row["dose_unit"]}}]}]}
    if entity == "imaging_report":
        return {"resourceType": "DiagnosticReport", "id": row["report_id"], "meta": meta, "status": "final",
                "category": [{"coding": [{"system": "http://dicom.nema.org/resources/ontology/DCM",
                                          "code": row["modality"]}]}],
                "code": {"text": row["body_part"]}, "subject": subject, "encounter": encounter,
                "effectiveDateTime": row["report_time"], "conclusion": row["report_text"]}
    if entity == "note":
        data = base64.b64encode(row["note_text"].encode("utf-8")).decode("ascii")
        return {"resourceType": "DocumentReference", "id": row["note_id"], "meta": meta, "status": "current",
                "type": {"text": row["note_type"]}, "subject": subject, "date": row["note_time"],
                "context": {"encounter": [encounter]},
                "content": [{"attachment": {"contentType": "text/plain; charset=utf-8", "data": data}}]}
    raise ValueError(f"no FHIR resource for {entity}")
