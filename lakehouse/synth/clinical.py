"""Clinical events of one block of hospital records, with outcomes drawn from documented risk models.

Encounters (outpatient, emergency, inpatient stays), admission labs, nursing vital signs, diagnoses,
procedures, medication orders, imaging reports and discharge notes. Two outcomes are planted from
data available before their index time:
- READMISSION_MODEL: unplanned inpatient admission within 30 days of an inpatient discharge
  (index: the discharge), from age, comorbidities, admission labs and length of stay;
- MORTALITY_MODEL: death in hospital (index: 24 h after admission), from age, comorbidities,
  admission labs and the first 24 h of vital signs.
Every stay's true probabilities go to the ground truth, so the best achievable AUROC is known.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

READMISSION_MODEL = {
    "intercept": -4.6,
    "per_decade_over_60": 0.5,
    "heart_failure": 1.8,
    "ckd": 1.1,
    "diabetes": 0.5,
    "creatinine_over_133_umol_l": 1.3,
    "hba1c_over_8_pct": 1.0,
    "albumin_under_30_g_l": 0.9,
    "hemoglobin_under_100_g_l": 0.6,
    "per_day_of_stay_over_5": 0.18,
    "male": 0.2,
}
MORTALITY_MODEL = {
    "intercept": -6.0,
    "per_decade_over_60": 0.5,
    "heart_failure": 0.7,
    "ckd": 0.4,
    "cancer": 1.3,
    "copd": 0.4,
    "albumin_under_30_g_l": 1.3,
    "sodium_outside_130_150": 1.0,
    "creatinine_over_133_umol_l": 0.6,
    "spo2_min_24h_under_92": 1.4,
    "heart_rate_max_24h_over_110": 0.8,
    "emergency_admission": 0.5,
    "male": 0.3,
}
READMISSION_ROUNDS = 3
# canonical lab and vital tests: (LOINC, canonical unit)
LABS = {
    "glucose": ("14749-6", "mmol/L"),
    "creatinine": ("14682-9", "umol/L"),
    "hba1c": ("4548-4", "%"),
    "albumin": ("1751-7", "g/L"),
    "hemoglobin": ("718-7", "g/L"),
    "sodium": ("2951-2", "mmol/L"),
    "potassium": ("2823-3", "mmol/L"),
}
VITALS = {
    "temperature": ("8310-5", "Cel"),
    "heart_rate": ("8867-4", "/min"),
    "sbp": ("8480-6", "mm[Hg]"),
    "dbp": ("8462-4", "mm[Hg]"),
    "spo2": ("59408-5", "%"),
    "resp_rate": ("9279-1", "/min"),
}
REFERENCE = {
    "glucose": (3.9, 6.1),
    "creatinine": (44, 133),
    "hba1c": (4.0, 6.0),
    "albumin": (35, 55),
    "hemoglobin": (115, 175),
    "sodium": (135, 145),
    "potassium": (3.5, 5.3),
}
DEPARTMENTS = {  # inpatient department -> (beds, primary reason (ICD-10, name), procedure (ICD-9-CM-3, name))
    "心内科": (40, ("I21.9", "急性心肌梗死"), ("36.06", "冠状动脉支架置入术")),
    "内分泌科": (30, ("E11.6", "2型糖尿病伴并发症"), None),
    "肾内科": (30, ("N17.9", "急性肾损伤"), None),
    "呼吸科": (40, ("J18.9", "肺炎"), None),
    "普外科": (35, ("K35.8", "急性阑尾炎"), ("47.09", "阑尾切除术")),
    "骨科": (35, ("S72.0", "股骨颈骨折"), ("81.51", "全髋关节置换术")),
}
OUTPATIENT_DEPARTMENTS = ["全科门诊", "内分泌门诊", "心内门诊", "呼吸门诊"]
COMORBIDITY_CODES = {
    "diabetes": ("E11.9", "2型糖尿病"),
    "hypertension": ("I10", "原发性高血压"),
    "heart_failure": ("I50.9", "心力衰竭"),
    "ckd": ("N18.3", "慢性肾脏病3期"),
    "copd": ("J44.9", "慢性阻塞性肺病"),
    "cancer": ("C34.9", "肺恶性肿瘤"),
}
DRUGS = {
    "metformin": ("A10BA02", "二甲双胍片", 500, "mg", "PO", "bid"),
    "insulin": ("A10AE04", "甘精胰岛素注射液", 10, "U", "SC", "qd"),
    "furosemide": ("C03CA01", "呋塞米片", 20, "mg", "PO", "qd"),
    "amlodipine": ("C08CA01", "氨氯地平片", 5, "mg", "PO", "qd"),
    "ceftriaxone": ("J01DD04", "注射用头孢曲松钠", 2, "g", "IV", "qd"),
    "aspirin": ("B01AC06", "阿司匹林肠溶片", 100, "mg", "PO", "qd"),
}
IMAGING = [
    ("CR", "胸部", "双肺纹理增多，未见明显实变影。心影不大。"),
    ("CT", "头颅", "脑实质未见明显异常密度影，脑室系统无扩张。"),
    ("US", "腹部", "肝胆胰脾未见明显异常。"),
    ("CT", "胸部", "右下肺见斑片状高密度影，考虑炎症。"),
]
FAMILY_GIVEN = "春梅秋菊冬雪桂芝淑珍德福永贵振华"
SECONDS_PER_DAY = 86400


@dataclass
class Clinical:
    encounters: pd.DataFrame
    labs: pd.DataFrame
    vitals: pd.DataFrame
    diagnoses: pd.DataFrame
    procedures: pd.DataFrame
    medications: pd.DataFrame
    imaging: pd.DataFrame
    notes: pd.DataFrame
    note_identifiers: pd.DataFrame


def draw_clinical(rng: np.random.Generator, records: pd.DataFrame, start: pd.Timestamp, end: pd.Timestamp) -> Clinical:
    """Every event of the block's records between start and end (exclusive), stays finished by end."""
    history = int((end - start).total_seconds())
    frail = (
        0.3 * records["heart_failure"]
        + 0.2 * records["ckd"]
        + 0.1 * records["diabetes"]
        + 0.2 * records["copd"]
        + 0.2 * records["cancer"]
        + (records["age"] - 50).clip(0) / 100
    ).to_numpy()
    counts = {
        "outpatient": rng.poisson(2.0 + 3 * frail + 2 * records["hypertension"].to_numpy()),
        "emergency": rng.poisson(0.2 + 0.4 * frail),
        "inpatient": rng.poisson(0.5 + 1.2 * frail),
    }
    parts = []
    for kind, n in counts.items():
        idx = np.repeat(np.arange(len(records)), n)
        admit = start + pd.to_timedelta(rng.integers(0, history, len(idx)), unit="s")
        parts.append(pd.DataFrame({"record": idx, "encounter_type": kind, "admit_time": admit, "readmission": False}))
    stays = _complete(rng, pd.concat(parts, ignore_index=True), records)
    rounds = [stays]
    for _ in range(READMISSION_ROUNDS):  # readmissions are stays too, themselves at risk
        last = rounds[-1]
        back = last[last["readmitted"]]
        if back.empty:
            break
        delay = pd.to_timedelta(rng.integers(SECONDS_PER_DAY, 30 * SECONDS_PER_DAY, len(back)), unit="s")
        follow = pd.DataFrame(
            {
                "record": back["record"].to_numpy(),
                "encounter_type": "inpatient",
                "admit_time": (back["discharge_time"] + delay).to_numpy(),
                "readmission": True,
            }
        )
        rounds.append(_complete(rng, follow, records))
    enc = pd.concat(rounds, ignore_index=True)
    enc = _cut_after_death_and_end(enc, end)
    return _events(rng, enc, records)


def _complete(rng: np.random.Generator, enc: pd.DataFrame, records: pd.DataFrame) -> pd.DataFrame:
    """Stay details, admission labs, first-24 h vitals and both outcome draws for new encounters."""
    enc = enc.join(
        records[["age", "sex", "diabetes", "hypertension", "heart_failure", "ckd", "copd", "cancer"]], on="record"
    )
    n = len(enc)
    inpatient = (enc["encounter_type"] == "inpatient").to_numpy()
    emergency_admission = inpatient & (enc["readmission"].to_numpy() | (rng.random(n) < 0.35))
    los = np.where(inpatient, 1 + rng.gamma(2.0, 2.2, n), rng.integers(600, 7200, n) / SECONDS_PER_DAY)
    enc["admit_time"] = enc["admit_time"].dt.floor("min")
    enc["discharge_time"] = (enc["admit_time"] + pd.to_timedelta(los * SECONDS_PER_DAY, unit="s")).dt.floor("min")
    enc["admission_type"] = np.where(inpatient, np.where(emergency_admission, "emergency", "elective"), "")
    departments = list(DEPARTMENTS)
    dept_index = rng.integers(0, len(departments), n)
    enc["department"] = np.where(
        inpatient,
        np.array(departments)[dept_index],
        np.where(
            enc["encounter_type"] == "emergency",
            "急诊科",
            np.array(OUTPATIENT_DEPARTMENTS)[dept_index % len(OUTPATIENT_DEPARTMENTS)],
        ),
    )
    beds = np.array([DEPARTMENTS[d][0] if d in DEPARTMENTS else 1 for d in enc["department"]])
    bed_no = rng.integers(1, 1000, n) % beds + 1
    enc["ward"] = np.where(inpatient, enc["department"] + "病区", "")
    enc["bed"] = np.where(inpatient, np.char.zfill(bed_no.astype(str), 2), "")
    acuity = rng.normal(0, 1, n) + 0.3 * enc["heart_failure"] + 0.3 * enc["copd"] + 0.5 * emergency_admission
    enc["acuity"] = acuity
    enc = enc.assign(**_true_labs(rng, enc))
    first24 = _first_day_vitals(rng, enc)
    enc = enc.assign(**first24)
    death_p = np.where(
        inpatient & (los >= 1), _probability(MORTALITY_MODEL, _mortality_terms(enc, emergency_admission)), np.nan
    )
    died = inpatient & (rng.random(n) < np.nan_to_num(death_p))
    enc["mortality_probability"] = death_p
    enc["died"] = died
    enc["discharge_disposition"] = np.where(
        inpatient, np.where(died, "death", np.where(rng.random(n) < 0.95, "home", "transfer")), ""
    )
    readmit_p = np.where(inpatient & ~died, _probability(READMISSION_MODEL, _readmission_terms(enc, los)), np.nan)
    enc["readmission_probability"] = readmit_p
    enc["readmitted"] = inpatient & ~died & (rng.random(n) < np.nan_to_num(readmit_p))
    enc["los_days"] = los
    return enc


def _true_labs(rng: np.random.Generator, enc: pd.DataFrame) -> dict[str, np.ndarray]:
    n = len(enc)
    a = enc["acuity"].to_numpy()
    pos = np.clip(a, 0, None)
    diabetes, ckd, cancer = (enc[c].to_numpy() for c in ("diabetes", "ckd", "cancer"))
    male = (enc["sex"] == "M").to_numpy()
    hba1c = 5.4 + 2.4 * diabetes + rng.normal(0, 0.7, n)
    return {
        "creatinine": (75 * np.exp(rng.normal(0, 0.25, n)) * np.where(ckd, 2.0, 1.0) * (1 + 0.3 * pos)).round(1),
        "glucose": (5.3 + 3.0 * diabetes + rng.normal(0, 1.0, n).clip(-2.5) + 0.5 * pos).round(2),
        "hba1c": np.where(rng.random(n) < np.where(diabetes, 0.8, 0.3), hba1c.round(1), np.nan),
        "albumin": (40 - 4 * a - 3 * cancer + rng.normal(0, 3, n)).clip(15, 55).round(1),
        "hemoglobin": (np.where(male, 145, 125) - 8 * ckd - 10 * cancer - 5 * a + rng.normal(0, 12, n))
        .clip(50, 200)
        .round(0),
        "sodium": (140 + rng.normal(0, 3 + 2 * pos, n)).clip(115, 165).round(0),
        "potassium": (4.2 + 0.4 * ckd + rng.normal(0, 0.4, n)).clip(2.5, 7).round(1),
    }


def _first_day_vitals(rng: np.random.Generator, enc: pd.DataFrame) -> dict[str, np.ndarray]:
    """The three vital-sign sets charted in the first 24 h; the mortality model reads their extremes."""
    n = len(enc)
    sets = [_vital_set(rng, enc, k) for k in range(3)]
    out = {f"first24_{name}_{k}": s[name] for k, s in enumerate(sets) for name in VITALS}
    out["spo2_min_24h"] = np.min([s["spo2"] for s in sets], axis=0)
    out["heart_rate_max_24h"] = np.max([s["heart_rate"] for s in sets], axis=0)
    assert all(len(v) == n for v in out.values())
    return out


def _vital_set(rng: np.random.Generator, enc: pd.DataFrame, k) -> dict[str, np.ndarray]:
    n = len(enc)
    a = enc["acuity"].to_numpy()
    pos = np.clip(a, 0, None)
    early = np.asarray(k) < 3
    return {
        "temperature": (36.8 + rng.normal(0, 0.3, n) + 0.6 * pos * early).round(1),
        "heart_rate": (78 + 10 * a + rng.normal(0, 8, n)).clip(35, 190).round(0),
        "sbp": (125 + 15 * enc["hypertension"].to_numpy() + rng.normal(0, 12, n)).clip(70, 230).round(0),
        "dbp": (78 + 8 * enc["hypertension"].to_numpy() + rng.normal(0, 8, n)).clip(40, 140).round(0),
        "spo2": (97 - 2.5 * pos - 2 * enc["copd"].to_numpy() + rng.normal(0, 1, n)).clip(70, 100).round(0),
        "resp_rate": (16 + 2 * a + rng.normal(0, 2, n)).clip(8, 45).round(0),
    }


def _probability(model: dict[str, float], terms: dict[str, np.ndarray]) -> np.ndarray:
    """The documented model applied term by term; a coefficient without its term is an error, not a zero."""
    if set(terms) != set(model) - {"intercept"}:
        raise ValueError(f"model terms {sorted(set(model) - {'intercept'})} != computed terms {sorted(terms)}")
    logit = model["intercept"] + sum(model[name] * np.asarray(value, dtype=float) for name, value in terms.items())
    return 1 / (1 + np.exp(-logit))


def _decades_over_60(enc: pd.DataFrame) -> np.ndarray:
    return ((enc["age"].to_numpy() - 60) / 10).clip(0)


def _readmission_terms(enc: pd.DataFrame, los: np.ndarray) -> dict[str, np.ndarray]:
    return {
        "per_decade_over_60": _decades_over_60(enc),
        "heart_failure": enc["heart_failure"],
        "ckd": enc["ckd"],
        "diabetes": enc["diabetes"],
        "creatinine_over_133_umol_l": enc["creatinine"] > 133,
        "hba1c_over_8_pct": np.nan_to_num(enc["hba1c"].to_numpy()) > 8,
        "albumin_under_30_g_l": enc["albumin"] < 30,
        "hemoglobin_under_100_g_l": enc["hemoglobin"] < 100,
        "per_day_of_stay_over_5": (los - 5).clip(0),
        "male": enc["sex"] == "M",
    }


def _mortality_terms(enc: pd.DataFrame, emergency: np.ndarray) -> dict[str, np.ndarray]:
    return {
        "per_decade_over_60": _decades_over_60(enc),
        "heart_failure": enc["heart_failure"],
        "ckd": enc["ckd"],
        "cancer": enc["cancer"],
        "copd": enc["copd"],
        "albumin_under_30_g_l": enc["albumin"] < 30,
        "sodium_outside_130_150": (enc["sodium"] < 130) | (enc["sodium"] > 150),
        "creatinine_over_133_umol_l": enc["creatinine"] > 133,
        "spo2_min_24h_under_92": enc["spo2_min_24h"] < 92,
        "heart_rate_max_24h_over_110": enc["heart_rate_max_24h"] > 110,
        "emergency_admission": emergency,
        "male": enc["sex"] == "M",
    }


def _cut_after_death_and_end(enc: pd.DataFrame, end: pd.Timestamp) -> pd.DataFrame:
    """Nothing happens to a person after death, and the dump holds only stays finished by its end."""
    enc = enc[enc["discharge_time"] < end]
    death = enc[enc["died"]].groupby("record")["discharge_time"].min()
    died_at = enc["record"].map(death)
    enc = enc[died_at.isna() | (enc["admit_time"] < died_at)]
    return enc.sort_values(["record", "admit_time", "encounter_type"], kind="stable").reset_index(drop=True)


def _events(rng: np.random.Generator, enc: pd.DataFrame, records: pd.DataFrame) -> Clinical:
    inpatient = enc["encounter_type"] == "inpatient"
    stays = enc[inpatient]
    labs = _lab_rows(rng, enc)
    vitals = _vital_rows(rng, enc)
    diagnoses = _diagnosis_rows(enc)
    procedures = _procedure_rows(stays)
    medications = _medication_rows(enc)
    imaging = _imaging_rows(rng, stays)
    notes, identifiers = _note_rows(rng, stays, records)
    return Clinical(enc, labs, vitals, diagnoses, procedures, medications, imaging, notes, identifiers)


def _lab_rows(rng: np.random.Generator, enc: pd.DataFrame) -> pd.DataFrame:
    inpatient = (enc["encounter_type"] == "inpatient").to_numpy()
    panel_offset = pd.Series(rng.integers(1800, 6 * 3600, len(enc)), index=enc.index)  # one panel, one report time
    parts = []
    for test in LABS:
        wanted = enc[test].notna().to_numpy() & (inpatient | ((test in ("glucose", "hba1c")) & enc["diabetes"]))
        sub = enc[wanted]
        offset = panel_offset.loc[sub.index].to_numpy()
        parts.append(
            pd.DataFrame(
                {
                    "encounter": sub.index,
                    "test": test,
                    "value": sub[test].to_numpy(),
                    "time": sub["admit_time"].to_numpy() + pd.to_timedelta(offset, unit="s").to_numpy(),
                    "seq": 0,
                }
            )
        )
        if test in ("creatinine", "sodium"):  # a day-2 repeat on longer stays
            long_stay = sub[(sub["los_days"] > 2).to_numpy() & (sub["encounter_type"] == "inpatient").to_numpy()]
            drift = rng.normal(1.0, 0.05, len(long_stay))
            parts.append(
                pd.DataFrame(
                    {
                        "encounter": long_stay.index,
                        "test": test,
                        "value": (long_stay[test].to_numpy() * drift).round(1),
                        "time": long_stay["admit_time"].to_numpy() + np.timedelta64(30, "h"),
                        "seq": 1,
                    }
                )
            )
    labs = pd.concat(parts, ignore_index=True)
    labs["time"] = pd.to_datetime(labs["time"]).dt.floor("min")
    return labs.sort_values(["encounter", "time", "test"], kind="stable").reset_index(drop=True)


def _vital_rows(rng: np.random.Generator, enc: pd.DataFrame) -> pd.DataFrame:
    """Inpatient: a full set every 8 h of the stay (the first three as drawn for the mortality model);
    outpatient and emergency: one blood pressure and heart rate."""
    stays = enc[enc["encounter_type"] == "inpatient"]
    sets = np.floor(stays["los_days"].to_numpy() * 3).astype(int).clip(1)
    idx = np.repeat(stays.index.to_numpy(), sets)
    k = np.concatenate([np.arange(s) for s in sets]) if len(sets) else np.array([], dtype=int)
    expanded = enc.loc[idx]
    later = _vital_set(rng, expanded, k)
    parts = []
    for name in VITALS:
        first = np.select(
            [k == j for j in range(3)], [expanded[f"first24_{name}_{j}"].to_numpy() for j in range(3)], later[name]
        )
        parts.append(
            pd.DataFrame(
                {
                    "encounter": idx,
                    "measure": name,
                    "value": first,
                    "time": expanded["admit_time"].to_numpy() + (k * 8 + 2).astype("timedelta64[h]"),
                    "seq": k,
                }
            )
        )
    visits = enc[enc["encounter_type"] != "inpatient"]
    quick = _vital_set(rng, visits, 0)
    for name in ("sbp", "dbp", "heart_rate"):
        parts.append(
            pd.DataFrame(
                {
                    "encounter": visits.index,
                    "measure": name,
                    "value": quick[name],
                    "time": visits["admit_time"].to_numpy() + np.timedelta64(5, "m"),
                    "seq": 0,
                }
            )
        )
    vitals = pd.concat(parts, ignore_index=True)
    vitals = vitals[vitals["time"].to_numpy() < enc.loc[vitals["encounter"], "discharge_time"].to_numpy()]
    return vitals.sort_values(["encounter", "time", "measure"], kind="stable").reset_index(drop=True)


def _diagnosis_rows(enc: pd.DataFrame) -> pd.DataFrame:
    parts = []
    stays = enc[enc["encounter_type"] == "inpatient"]
    reasons = [DEPARTMENTS[d][1] for d in stays["department"]]
    parts.append(
        pd.DataFrame(
            {"encounter": stays.index, "code": [r[0] for r in reasons], "name": [r[1] for r in reasons], "rank": 0}
        )
    )
    for rank, (flag, (code, name)) in enumerate(COMORBIDITY_CODES.items(), start=1):
        having = enc[enc[flag].to_numpy() & (enc["encounter_type"] != "emergency").to_numpy()]
        parts.append(pd.DataFrame({"encounter": having.index, "code": code, "name": name, "rank": rank}))
    dx = pd.concat(parts, ignore_index=True).sort_values(["encounter", "rank"], kind="stable")
    dx["time"] = enc.loc[dx["encounter"], "admit_time"].to_numpy()
    return dx.reset_index(drop=True)


def _procedure_rows(stays: pd.DataFrame) -> pd.DataFrame:
    having = stays[[DEPARTMENTS[d][2] is not None for d in stays["department"]]]
    procedures = [DEPARTMENTS[d][2] for d in having["department"]]
    return pd.DataFrame(
        {
            "encounter": having.index,
            "code": [p[0] for p in procedures],
            "name": [p[1] for p in procedures],
            "time": having["admit_time"].to_numpy() + np.timedelta64(20, "h"),
        }
    )


def _medication_rows(enc: pd.DataFrame) -> pd.DataFrame:
    inpatient = (enc["encounter_type"] == "inpatient").to_numpy()
    rules = {
        "metformin": enc["diabetes"].to_numpy() & ~inpatient,
        "insulin": enc["diabetes"].to_numpy() & inpatient,
        "furosemide": enc["heart_failure"].to_numpy() & inpatient,
        "amlodipine": enc["hypertension"].to_numpy(),
        "ceftriaxone": (enc["department"] == "呼吸科").to_numpy(),
        "aspirin": (enc["department"] == "心内科").to_numpy(),
    }
    parts = [pd.DataFrame({"encounter": enc.index[wanted], "drug": drug}) for drug, wanted in rules.items()]
    meds = pd.concat(parts, ignore_index=True).sort_values(["encounter", "drug"], kind="stable")
    meds["start"] = enc.loc[meds["encounter"], "admit_time"].to_numpy() + np.timedelta64(3, "h")
    meds["end"] = enc.loc[meds["encounter"], "discharge_time"].to_numpy()
    return meds.reset_index(drop=True)


def _imaging_rows(rng: np.random.Generator, stays: pd.DataFrame) -> pd.DataFrame:
    having = stays[rng.random(len(stays)) < 0.4]
    kind = rng.integers(0, len(IMAGING), len(having))
    return pd.DataFrame(
        {
            "encounter": having.index,
            "modality": [IMAGING[k][0] for k in kind],
            "body_part": [IMAGING[k][1] for k in kind],
            "text": [IMAGING[k][2] for k in kind],
            "time": having["admit_time"].to_numpy() + np.timedelta64(6, "h"),
        }
    )


def _note_rows(rng: np.random.Generator, stays: pd.DataFrame, records: pd.DataFrame):
    """A discharge summary per stay that, as real notes do, names the patient and a relative and gives
    the ID number, phone and MRN. Each planted identifier is recorded with its exact text."""
    rec = records.loc[stays["record"]]
    n = len(stays)
    relatives = (
        rec["name"].str[0].to_numpy()
        + np.array(list(FAMILY_GIVEN))[rng.integers(0, len(FAMILY_GIVEN), n)]
        + np.array(list(FAMILY_GIVEN))[rng.integers(0, len(FAMILY_GIVEN), n)]
    )
    with_phone = rng.random(n) < 0.7
    with_mrn = rng.random(n) < 0.3
    texts, identifiers = [], []
    for i, (encounter, stay) in enumerate(stays.iterrows()):
        r = rec.iloc[i]
        sex = "男" if r["sex"] == "M" else "女"
        outcome = "死亡" if stay["died"] else "好转出院"
        parts = [f"患者{r['name']}，{sex}，{int(r['age'])}岁，身份证号{r['national_id'] or '不详'}，"]
        found = [("name", r["name"]), ("national_id", r["national_id"])]
        if with_phone[i]:
            parts.append(f"联系电话{r['phone']}，")
            found.append(("phone", r["phone"]))
        if with_mrn[i]:
            parts.append(f"病案号{r['mrn']}，")
            found.append(("mrn", r["mrn"]))
        parts.append(
            f"因{DEPARTMENTS[stay['department']][1][1]}入院，由家属{relatives[i]}陪同。"
            f"住院{stay['los_days']:.0f}天，{outcome}。"
        )
        texts.append("".join(parts))
        identifiers.extend((encounter, kind, value) for kind, value in found if value)
        identifiers.append((encounter, "relative_name", relatives[i]))
    notes = pd.DataFrame({"encounter": stays.index, "text": texts, "time": stays["discharge_time"].to_numpy()})
    return notes, pd.DataFrame(identifiers, columns=["encounter", "kind", "value"])
