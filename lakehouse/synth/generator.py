"""A synthetic region: hospitals' source dumps in their own dialects, with a ground truth beside them.

`generate(out, hospitals, patients, days, seed)` writes
    out/landing/<hospital>/<yyyy-mm-dd>/{patient,encounter,diagnosis,lab_result}.<ext>
    out/truth/{persons,patient_records,outcomes}.csv     (never read by the pipeline)

Day 1 holds the full history up to (end_date - days + 1); each later day holds that day's new
events. Readmissions are drawn from a documented risk model (RISK_MODEL) over age, comorbidities
and admission labs, so a model trained on the data has a known ceiling (the true probabilities).
All draws are vectorized numpy; the same seed gives the same bytes.
"""

from __future__ import annotations

import datetime as dt
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from lakehouse.errors import UsageError
from lakehouse.synth.dialects import Dialect, dialect_for, hospital_id

END_DATE = dt.date(2026, 1, 1)
HISTORY_DAYS = 3 * 365
SHARE_MULTI_HOSPITAL = 0.30
READMISSION_ROUNDS = 3
_RECORD_FIELDS = ["person_id", "hospital_id", "mrn", "age", "diabetes", "heart_failure", "ckd"]

# logit of 30-day readmission after an inpatient discharge (documented in the README)
RISK_MODEL = {
    "intercept": -4.2,
    "per_decade_over_60": 0.45,
    "heart_failure": 1.6,
    "ckd": 1.1,
    "diabetes": 0.5,
    "creatinine_over_133_umol_l": 1.2,
    "hba1c_over_8_pct": 0.9,
    "per_day_of_stay_over_5": 0.15,
}

SURNAMES = list("王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘于蒋蔡余杜叶程苏魏吕丁任沈")
GIVEN = list("伟芳娜秀英敏静丽强磊军洋勇艳杰娟涛明超秀兰霞平刚桂英华玉萍红娥玲芬燕彬斌宇浩凯鹏辉建国志")
CITIES = ["和平区", "河西区", "南开区", "河东区", "红桥区", "西青区"]
ROADS = ["解放路", "人民路", "建设路", "中山路", "胜利街", "友谊路"]
DEPARTMENTS = {"inpatient": ["心内科", "内分泌科", "肾内科", "呼吸科", "普外科", "骨科"],
               "outpatient": ["全科门诊", "内分泌门诊", "心内门诊"], "emergency": ["急诊科"]}
REASONS = [("J18.9", "肺炎"), ("I21.9", "急性心肌梗死"), ("K35.8", "急性阑尾炎"), ("S72.0", "股骨颈骨折"),
           ("I63.9", "脑梗死"), ("N39.0", "尿路感染"), ("J44.1", "慢性阻塞性肺病急性加重")]
COMORBIDITIES = {"diabetes": ("E11.9", "2型糖尿病"), "heart_failure": ("I50.9", "心力衰竭"),
                 "ckd": ("N18.3", "慢性肾脏病3期")}
GLUCOSE_MG_DL_PER_MMOL_L = 18.016
CREATININE_UMOL_L_PER_MG_DL = 88.42
ID_WEIGHTS = np.array([7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2])
ID_CHECK = np.array(list("10X98765432"))


@dataclass(frozen=True)
class GenerateResult:
    out: Path
    landing: Path
    truth: Path
    hospitals: list[str]
    files: int
    rows: dict[str, int]


def check_arguments(out: Path, hospitals: int, patients: int, days: int, overwrite: bool) -> None:
    for name, value in (("--hospitals", hospitals), ("--patients", patients), ("--days", days)):
        if value < 1:
            raise UsageError(f"{name} must be a positive number, got {value}")
    if days > 365:
        raise UsageError(f"--days must be at most 365, got {days}")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise UsageError(f"output folder {out} is not empty: choose another or pass --overwrite")


def generate(out: str | Path, hospitals: int = 3, patients: int = 3000, days: int = 1, seed: int = 42,
             overwrite: bool = False) -> GenerateResult:
    out = Path(out)
    check_arguments(out, hospitals, patients, days, overwrite)
    if out.exists():
        shutil.rmtree(out)
    rng = np.random.default_rng(seed)
    persons = _persons(rng, patients, hospitals)
    records = _patient_records(rng, persons, hospitals)
    encounters, outcomes = _encounters(rng, persons, records)
    diagnoses = _diagnoses(encounters, persons)
    labs = _labs(rng, encounters)
    landing, truth = out / "landing", out / "truth"
    files = 0
    rows = {"patient": len(records), "encounter": len(encounters), "diagnosis": len(diagnoses),
            "lab_result": len(labs)}
    for h in range(hospitals):
        hid, dialect = hospital_id(h), dialect_for(h)
        tables = _render(hid, dialect, records, encounters, diagnoses, labs)
        for entity, (frame, day_of_row) in tables.items():
            file_day = [_file_day(day, days) for day in day_of_row]
            for day, part in frame.groupby(file_day, sort=True):
                folder = landing / hid / str(day)
                folder.mkdir(parents=True, exist_ok=True)
                _write_csv(part, folder / f"{entity}.{_extension(dialect)}", dialect)
                files += 1
    truth.mkdir(parents=True)
    persons.drop(columns=["hospitals"]).to_csv(truth / "persons.csv", index=False)
    records.to_csv(truth / "patient_records.csv", index=False)
    outcomes.to_csv(truth / "outcomes.csv", index=False)
    return GenerateResult(out, landing, truth, [hospital_id(h) for h in range(hospitals)], files, rows)


# --- people ------------------------------------------------------------------------------------

def _persons(rng: np.random.Generator, n: int, hospitals: int) -> pd.DataFrame:
    age = rng.integers(18, 96, n)
    birth = pd.to_datetime(END_DATE) - pd.to_timedelta(age * 365 + rng.integers(0, 365, n), unit="D")
    sex = np.where(rng.random(n) < 0.5, "M", "F")
    older = (age - 40).clip(0) / 50
    diabetes = rng.random(n) < 0.08 + 0.15 * older
    heart_failure = rng.random(n) < 0.02 + 0.10 * older
    ckd = rng.random(n) < 0.03 + 0.08 * older + 0.05 * diabetes
    home = rng.integers(0, hospitals, n)
    second = np.where((rng.random(n) < SHARE_MULTI_HOSPITAL) & (hospitals > 1),
                      (home + rng.integers(1, max(hospitals, 2), n)) % hospitals, -1)
    names = (np.array(SURNAMES)[rng.integers(0, len(SURNAMES), n)]
             + np.array(GIVEN)[rng.integers(0, len(GIVEN), n)]
             + np.where(rng.random(n) < 0.7, np.array(GIVEN)[rng.integers(0, len(GIVEN), n)], ""))
    return pd.DataFrame({
        "person_id": np.arange(n),
        "name": names,
        "sex": sex,
        "birth_date": birth.date,
        "national_id": _national_ids(rng, birth, sex),
        "phone": [f"1{p}" for p in rng.integers(3_000_000_000, 9_999_999_999, n)],
        "address": (np.array(CITIES)[rng.integers(0, len(CITIES), n)]
                    + np.array(ROADS)[rng.integers(0, len(ROADS), n)]
                    + rng.integers(1, 300, n).astype(str) + "号"),
        "age": age, "diabetes": diabetes, "heart_failure": heart_failure, "ckd": ckd,
        "hospitals": [[a] if b < 0 else [a, b] for a, b in zip(home, second, strict=True)],
    })


def _national_ids(rng: np.random.Generator, birth: pd.DatetimeIndex, sex: np.ndarray) -> np.ndarray:
    """18-digit resident ID numbers: region, birth date, sequence (odd = male), ISO 7064 check digit."""
    region = rng.choice(["120101", "120103", "120104", "120102", "120106", "120111"], len(sex))
    seq = rng.integers(0, 500, len(sex)) * 2 + np.where(sex == "M", 1, 0)
    body = region + birth.strftime("%Y%m%d").to_numpy() + np.char.zfill(seq.astype(str), 3)
    digits = np.array([list(b) for b in body], dtype=int)
    return body + ID_CHECK[(digits * ID_WEIGHTS).sum(axis=1) % 11]


def valid_national_id(value: str) -> bool:
    if len(value) != 18 or not value[:17].isdigit():
        return False
    return ID_CHECK[sum(int(d) * w for d, w in zip(value[:17], ID_WEIGHTS, strict=True)) % 11] == value[17].upper()


def _patient_records(rng: np.random.Generator, persons: pd.DataFrame, hospitals: int) -> pd.DataFrame:
    exploded = persons[["person_id", "hospitals"]].explode("hospitals").rename(columns={"hospitals": "h"})
    exploded["h"] = exploded["h"].astype(int)
    exploded = exploded.sort_values(["h", "person_id"], kind="stable").reset_index(drop=True)
    exploded["hospital_id"] = [hospital_id(h) for h in exploded["h"]]
    exploded["mrn"] = exploded.groupby("h").cumcount().map(lambda i: f"{i + 100000:08d}")
    exploded["mrn"] = exploded["hospital_id"].str[1:] + exploded["mrn"]
    return exploded.merge(persons.drop(columns=["hospitals"]), on="person_id")


# --- encounters and outcomes --------------------------------------------------------------------

def _encounters(rng: np.random.Generator, persons: pd.DataFrame, records: pd.DataFrame):
    start = pd.Timestamp(END_DATE) - pd.Timedelta(days=HISTORY_DAYS)
    n = len(records)
    frail = (0.3 * records["heart_failure"] + 0.2 * records["ckd"] + 0.1 * records["diabetes"]
             + (records["age"] - 50).clip(0) / 100).to_numpy()
    n_out = rng.poisson(2.0 + 2 * frail)
    n_in = rng.poisson(0.6 + 1.2 * frail)
    rows = []
    for kind, counts in (("outpatient", n_out), ("inpatient", n_in)):
        idx = np.repeat(np.arange(n), counts)
        admit = start + pd.to_timedelta(rng.integers(0, HISTORY_DAYS * 86400, len(idx)), unit="s")
        rows.append(pd.DataFrame({"record": idx, "encounter_type": kind, "admit_time": admit}))
    enc = pd.concat(rows, ignore_index=True)
    enc = _with_stays(rng, enc)
    enc = enc.join(records[_RECORD_FIELDS], on="record")
    enc = _with_admission_labs(rng, enc)

    # readmission: drawn from RISK_MODEL at each inpatient discharge, readmissions' own discharges included
    stays = [enc.assign(readmission=False)]
    pending = stays[0]
    for _ in range(READMISSION_ROUNDS):
        pending = pending.assign(true_probability=_readmission_probability(pending))
        stays[-1] = pending
        readmit = (pending["encounter_type"] == "inpatient") & (rng.random(len(pending)) < pending["true_probability"])
        delay = pd.to_timedelta(rng.integers(1 * 86400, 30 * 86400, len(pending)), unit="s")
        follow = pd.DataFrame({"record": pending.loc[readmit, "record"].to_numpy(), "encounter_type": "inpatient",
                               "admit_time": (pending["discharge_time"] + delay)[readmit].to_numpy()})
        follow = _with_stays(rng, follow).join(records[_RECORD_FIELDS], on="record")
        pending = _with_admission_labs(rng, follow).assign(readmission=True)
        stays.append(pending)
    enc = pd.concat(stays, ignore_index=True)
    enc = enc[enc["discharge_time"] < pd.Timestamp(END_DATE)].copy()  # the dump holds finished stays
    enc["admission_type"] = np.where(enc["readmission"], "emergency", "elective")
    enc = enc.sort_values(["hospital_id", "admit_time", "record"], kind="stable").reset_index(drop=True)
    enc["encounter_id"] = enc["hospital_id"].str[1:] + "V" + enc.groupby("hospital_id").cumcount().map(
        lambda i: f"{i + 1:09d}")
    enc["department"] = [DEPARTMENTS[t][i % len(DEPARTMENTS[t])]
                         for t, i in zip(enc["encounter_type"], rng.integers(0, 60, len(enc)), strict=True)]
    inpatient = enc[(enc["encounter_type"] == "inpatient") & enc["true_probability"].notna()]
    outcomes = inpatient[["person_id", "hospital_id", "encounter_id", "discharge_time"]].assign(
        true_probability=inpatient["true_probability"].round(6))
    return enc, outcomes


def _readmission_probability(enc: pd.DataFrame) -> pd.Series:
    logit = (RISK_MODEL["intercept"]
             + RISK_MODEL["per_decade_over_60"] * ((enc["age"] - 60) / 10).clip(lower=0)
             + RISK_MODEL["heart_failure"] * enc["heart_failure"] + RISK_MODEL["ckd"] * enc["ckd"]
             + RISK_MODEL["diabetes"] * enc["diabetes"]
             + RISK_MODEL["creatinine_over_133_umol_l"] * (enc["creatinine"] > 133)
             + RISK_MODEL["hba1c_over_8_pct"] * (enc["hba1c"].fillna(0) > 8)
             + RISK_MODEL["per_day_of_stay_over_5"] * (enc["los_days"] - 5).clip(lower=0))
    probability = 1 / (1 + np.exp(-logit.astype(float)))
    return probability.where(enc["encounter_type"] == "inpatient")


def _with_stays(rng: np.random.Generator, enc: pd.DataFrame) -> pd.DataFrame:
    n = len(enc)
    inpatient = (enc["encounter_type"] == "inpatient").to_numpy()
    los = np.where(inpatient, 1 + rng.gamma(2.0, 2.0, n), 0.0)
    enc = enc.assign(los_days=los.round(2))
    enc["discharge_time"] = enc["admit_time"] + pd.to_timedelta(
        np.where(inpatient, los * 86400, rng.integers(600, 7200, n)), unit="s")
    enc["discharge_time"] = enc["discharge_time"].dt.floor("min")
    enc["admit_time"] = enc["admit_time"].dt.floor("min")
    enc["discharge_disposition"] = np.where(inpatient, np.where(rng.random(n) < 0.95, "home", "transfer"), "")
    return enc


def _with_admission_labs(rng: np.random.Generator, enc: pd.DataFrame) -> pd.DataFrame:
    n = len(enc)
    creatinine = np.exp(rng.normal(np.log(75), 0.25, n)) * np.where(enc["ckd"], 2.0, 1.0)
    hba1c = 5.4 + 2.2 * enc["diabetes"].to_numpy() + rng.normal(0, 0.7, n)
    glucose = 5.3 + 3.0 * enc["diabetes"].to_numpy() + rng.normal(0, 1.0, n).clip(-2.5)
    has_hba1c = rng.random(n) < np.where(enc["diabetes"], 0.8, 0.3)
    return enc.assign(creatinine=creatinine.round(1), hba1c=np.where(has_hba1c, hba1c.round(1), np.nan),
                      glucose=glucose.round(2))


def _diagnoses(enc: pd.DataFrame, persons: pd.DataFrame) -> pd.DataFrame:
    parts = []
    inpatient = enc[enc["encounter_type"] == "inpatient"]
    reason = inpatient.index.to_numpy() % len(REASONS)
    parts.append(pd.DataFrame({"encounter": inpatient.index, "code": [REASONS[i][0] for i in reason],
                               "name": [REASONS[i][1] for i in reason], "rank": 0}))
    for rank, (flag, (code, name)) in enumerate(COMORBIDITIES.items(), start=1):
        having = enc[enc[flag]]
        parts.append(pd.DataFrame({"encounter": having.index, "code": code, "name": name, "rank": rank}))
    dx = pd.concat(parts).sort_values(["encounter", "rank"], kind="stable").reset_index(drop=True)
    dx = dx.join(enc[["hospital_id", "mrn", "encounter_id", "admit_time"]], on="encounter")
    dx["diagnosis_id"] = dx["encounter_id"] + "-D" + dx["rank"].astype(str)
    return dx


def _labs(rng: np.random.Generator, enc: pd.DataFrame) -> pd.DataFrame:
    inpatient = enc["encounter_type"] == "inpatient"
    parts = []
    for test in ("glucose", "creatinine", "hba1c"):
        having = enc[enc[test].notna() & (inpatient | (test == "glucose"))]
        parts.append(pd.DataFrame({"encounter": having.index, "test": test, "value": having[test]}))
    labs = pd.concat(parts).sort_values(["encounter", "test"], kind="stable").reset_index(drop=True)
    labs = labs.join(enc[["hospital_id", "mrn", "encounter_id", "admit_time"]], on="encounter")
    labs["result_time"] = labs["admit_time"] + pd.to_timedelta(rng.integers(1800, 6 * 3600, len(labs)), unit="s")
    labs["result_time"] = labs["result_time"].dt.floor("min")
    labs = labs[labs["result_time"] < pd.Timestamp(END_DATE)]
    labs["result_id"] = labs["encounter_id"] + "-" + labs["test"].str.upper().str[:4]
    return labs


# --- rendering in each hospital's dialect -------------------------------------------------------

def _render(hid: str, d: Dialect, records, encounters, diagnoses, labs) -> dict:
    ts, day = d.timestamp_format, d.date_format
    rec = records[records["hospital_id"] == hid]
    enc = encounters[encounters["hospital_id"] == hid]
    first_visit = enc.groupby("mrn")["admit_time"].min()
    registered = rec["mrn"].map(first_visit).fillna(pd.Timestamp(END_DATE) - pd.Timedelta(days=HISTORY_DAYS))
    patient = pd.DataFrame({
        "mrn": rec["mrn"], "name": rec["name"], "national_id": rec["national_id"],
        "sex": np.where(rec["sex"] == "M", d.sex_values[0], d.sex_values[1]),
        "birth_date": pd.to_datetime(rec["birth_date"]).dt.strftime(day), "phone": rec["phone"],
        "address": rec["address"], "updated_at": registered.dt.strftime(ts),
    })
    encounter = pd.DataFrame({
        "encounter_id": enc["encounter_id"], "mrn": enc["mrn"],
        "encounter_type": enc["encounter_type"].map(d.encounter_types), "department": enc["department"],
        "admit_time": enc["admit_time"].dt.strftime(ts),
        "discharge_time": np.where(enc["encounter_type"] == "inpatient", enc["discharge_time"].dt.strftime(ts), ""),
        "discharge_disposition": enc["discharge_disposition"], "updated_at": enc["discharge_time"].dt.strftime(ts),
    })
    dx = diagnoses[diagnoses["hospital_id"] == hid]
    diagnosis = pd.DataFrame({
        "diagnosis_id": dx["diagnosis_id"], "encounter_id": dx["encounter_id"], "mrn": dx["mrn"],
        "icd_code": dx["code"].map(lambda c: _icd(c, d.icd_style)), "diagnosis_name": dx["name"],
        "diagnosis_time": dx["admit_time"].dt.strftime(ts), "updated_at": dx["admit_time"].dt.strftime(ts),
    })
    lb = labs[labs["hospital_id"] == hid]
    codes = lb["test"].map(d.labs)
    lab = pd.DataFrame({
        "result_id": lb["result_id"], "encounter_id": lb["encounter_id"], "mrn": lb["mrn"],
        "test_code": codes.map(lambda c: c.local_code), "test_name": codes.map(lambda c: c.local_name),
        "value": [_local_value(t, v, c.unit) for t, v, c in zip(lb["test"], lb["value"], codes, strict=True)],
        "unit": codes.map(lambda c: c.unit), "result_time": lb["result_time"].dt.strftime(ts),
        "updated_at": lb["result_time"].dt.strftime(ts),
    })
    return {
        "patient": (_vendor_columns(patient, d, "patient"), registered.dt.date.to_numpy()),
        "encounter": (_vendor_columns(encounter, d, "encounter"), enc["discharge_time"].dt.date.to_numpy()),
        "diagnosis": (_vendor_columns(diagnosis, d, "diagnosis"), dx["admit_time"].dt.date.to_numpy()),
        "lab_result": (_vendor_columns(lab, d, "lab_result"), lb["result_time"].dt.date.to_numpy()),
    }


def _icd(code: str, style: str) -> str:
    if style == "nodot":
        return code.replace(".", "")
    if style == "extension":
        head, _, tail = code.partition(".")
        return f"{head}.{tail.ljust(3, '0')}"
    return code


def _local_value(test: str, value: float, unit: str) -> str:
    if test == "glucose" and unit == "mg/dL":
        return f"{value * GLUCOSE_MG_DL_PER_MMOL_L:.0f}"
    if test == "creatinine" and unit == "mg/dL":
        return f"{value / CREATININE_UMOL_L_PER_MG_DL:.2f}"
    return f"{value:g}"


def _vendor_columns(frame: pd.DataFrame, d: Dialect, entity: str) -> pd.DataFrame:
    return frame.rename(columns=d.columns[entity])[list(d.columns[entity].values())]


def _file_day(event_day: dt.date, days: int) -> dt.date:
    """Events up to the first day's cut-off go to day 1's full history; later ones to their own day."""
    first = END_DATE - dt.timedelta(days=days)  # day 1's folder; END_DATE itself is exclusive
    return max(event_day, first)


def _extension(d: Dialect) -> str:
    return "tsv" if d.delimiter == "\t" else "csv"


def _write_csv(frame: pd.DataFrame, path: Path, d: Dialect) -> None:
    frame.to_csv(path, sep=d.delimiter, encoding=d.encoding, index=False, lineterminator="\n")
