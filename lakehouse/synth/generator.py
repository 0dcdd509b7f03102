"""A synthetic region: each hospital's dumps in its own dialect, with a ground truth beside them.

    out/landing/<hospital>/<yyyy-mm-dd>/<entity>-b<block>.<ext>   what hospitals send
    out/truth/<table>/b<block>.csv and out/truth/*.csv/json        what really happened (never read by the pipeline)

Persons are generated in blocks of `block_size`; a block's draws depend only on (seed, block), so
blocks run in any order or in parallel (`workers`) and give identical bytes, and memory stays
bounded by the block size whatever the region's size. Day 1 holds the full history up to
(end_date - days + 1); each later day holds that day's events plus resends that correct or cancel
earlier records. Record-level defects are planted at `defect_rate` per kind and file-level
defects once per region; every one is in truth/defects with its file, line and kind.
"""

from __future__ import annotations

import bisect
import datetime as dt
import json
import math
import shutil
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from lakehouse import progress
from lakehouse.errors import UsageError
from lakehouse.synth import defects as D
from lakehouse.synth.clinical import DEPARTMENTS, DRUGS, LABS, REFERENCE, VITALS, Clinical, draw_clinical
from lakehouse.synth.dialects import DIALECTS, FIELDS, ID_FIELDS, Dialect, dialect_for, hospital_id
from lakehouse.synth.people import draw_persons, pinyin, registrations
from lakehouse.synth.render import fhir_resource, format_times, write_csv, write_hl7, write_ndjson

BYTES_PER_PERSON = 40_000  # upper bound of landing + truth bytes per person, measured at the defaults (README)
RESENT_ENTITIES = ("encounter", "lab_result", "medication", "diagnosis")


@dataclass(frozen=True)
class GeneratorConfig:
    """Sizes and rates. The defaults are the yardstick every number of the project is measured on."""

    hospitals: int = 5
    patients: int = 3000
    days: int = 1
    seed: int = 42
    share_multi_hospital: float = 0.30
    identity_noise_rate: float = 0.05
    hard_negative_share: float = 0.01
    defect_rate: float = 0.005
    resend_rate: float = 0.02
    block_size: int = 10_000
    end_date: dt.date = dt.date(2026, 1, 1)
    history_days: int = 3 * 365
    dialects: tuple[str, ...] = ()  # empty: hospital i uses DIALECT_ORDER[i % 5]

    def dialect(self, index: int) -> Dialect:
        return DIALECTS[self.dialects[index]] if self.dialects else dialect_for(index)

    @property
    def blocks(self) -> int:
        return math.ceil(self.patients / self.block_size)

    @property
    def end(self) -> pd.Timestamp:
        return pd.Timestamp(self.end_date)

    @property
    def first_day(self) -> dt.date:
        return self.end_date - dt.timedelta(days=self.days)


@dataclass
class GenerateResult:
    out: Path
    landing: Path
    truth: Path
    hospitals: list[str]
    files: int
    rows: dict[str, int]
    defects: dict[str, int] = field(default_factory=dict)
    rows_by_hospital: dict[str, dict[str, int]] = field(default_factory=dict)


def check_arguments(out: Path, config: GeneratorConfig, overwrite: bool) -> None:
    for name in ("hospitals", "patients", "days", "block_size"):
        if getattr(config, name) < 1:
            raise UsageError(f"--{name} must be a positive number, got {getattr(config, name)}")
    if config.days > 365:
        raise UsageError(f"--days must be at most 365, got {config.days}")
    for name in ("share_multi_hospital", "identity_noise_rate", "hard_negative_share", "defect_rate", "resend_rate"):
        if not 0 <= getattr(config, name) <= 0.5:
            raise UsageError(f"{name} must be between 0 and 0.5, got {getattr(config, name)}")
    unknown = [d for d in config.dialects if d not in DIALECTS]
    if unknown:
        raise UsageError(f"unknown dialect(s) {unknown}; known: {sorted(DIALECTS)}")
    if config.dialects and len(config.dialects) != config.hospitals:
        raise UsageError(f"--dialects names {len(config.dialects)} dialects for {config.hospitals} hospitals")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise UsageError(f"output folder {out} is not empty: choose another or pass --overwrite")
    probe = out if out.exists() else next(p for p in out.parents if p.exists())
    needed, free = config.patients * BYTES_PER_PERSON, shutil.disk_usage(probe).free
    if needed > free:
        raise UsageError(
            f"not enough disk: {config.patients} persons need about {needed / 1e9:.1f} GB, "
            f"{free / 1e9:.1f} GB free under {probe}"
        )


def generate(
    out: str | Path,
    hospitals: int = 5,
    patients: int = 3000,
    days: int = 1,
    seed: int = 42,
    overwrite: bool = False,
    workers: int = 1,
    **rates,
) -> GenerateResult:
    out = Path(out)
    config = GeneratorConfig(hospitals=hospitals, patients=patients, days=days, seed=seed, **rates)
    check_arguments(out, config, overwrite)
    if out.exists():
        shutil.rmtree(out)
    (out / "landing").mkdir(parents=True)
    rows: dict[str, int] = {}
    by_hospital: dict[str, dict[str, int]] = {}
    files = 0
    with ExitStack() as stack:
        if workers > 1 and config.blocks > 1:
            pool = stack.enter_context(ProcessPoolExecutor(max_workers=workers))
            results = pool.map(_block, [config] * config.blocks, range(config.blocks), [out] * config.blocks)
        else:
            results = (_block(config, block, out) for block in range(config.blocks))
        for done, (block_rows, block_files) in enumerate(results, start=1):  # in block order
            files += block_files
            for (hid, entity), count in block_rows.items():
                rows[entity] = rows.get(entity, 0) + count
                by_hospital.setdefault(hid, {})[entity] = by_hospital.get(hid, {}).get(entity, 0) + count
            progress.step("generate", f"block {done - 1}", done, config.blocks, "blocks", sum(rows.values()))
    files += _file_defects(config, out)
    summary = _summarize(config, out, rows, files, by_hospital)
    return GenerateResult(out, out / "landing", out / "truth", [hospital_id(h) for h in range(hospitals)], files,
                          rows, summary["defects"], by_hospital)


# --- one block -----------------------------------------------------------------------------------


def _block(config: GeneratorConfig, block: int, out: Path) -> tuple[dict[tuple[str, str], int], int]:
    rng = np.random.default_rng([config.seed, block])
    n = min(config.block_size, config.patients - block * config.block_size)
    case_mix = np.linspace(0.8, 1.4, config.hospitals)  # a different case mix per hospital
    start = config.end - pd.Timedelta(days=config.history_days)
    persons = draw_persons(
        rng,
        block * config.block_size * 2,
        n,
        config.hospitals,
        config.end,
        case_mix,
        config.share_multi_hospital,
        config.hard_negative_share,
    )
    records = registrations(rng, persons, config.identity_noise_rate)
    records["hospital_id"] = [hospital_id(h) for h in records["hospital"]]
    records["mrn"] = (
        records["hospital_id"].str[1:]
        + f"{block:04d}"
        + records.groupby("hospital").cumcount().map(lambda i: f"{i:06d}")
    )
    clinical = draw_clinical(rng, records, start, config.end)
    _assign_encounter_ids(clinical.encounters, records, block)
    truth = _truth_tables(persons, records, clinical)
    rows: dict[tuple[str, str], int] = {}
    files = 0
    defect_truth = []
    for h in range(config.hospitals):
        hid, dialect = hospital_id(h), config.dialect(h)
        tables = _hospital_tables(rng, clinical, records, hid, dialect, config, block)
        truth.setdefault("lab_values", []).append(tables.pop("_lab_values"))
        truth.setdefault("codes", []).append(tables.pop("_codes"))
        truth.setdefault("resends", []).append(tables.pop("_resends"))
        for entity, (frame, days, extra) in tables.items():
            rows[(hid, entity)] = rows.get((hid, entity), 0) + len(frame)
            for day in sorted(set(days)):
                part = frame[days == day].reset_index(drop=True)
                part_extra = extra[days == day].reset_index(drop=True) if extra is not None else None
                written = _write(rng, out, hid, dialect, entity, part, part_extra, day, block, config)
                files += 1
                defect_truth.extend(written)
    truth["defects"] = [
        pd.DataFrame(defect_truth, columns=["file", "line", "kind", "hospital_id", "entity", "record_id"])
    ]
    for table, frames in truth.items():
        folder = out / "truth" / table
        folder.mkdir(parents=True, exist_ok=True)
        frame = pd.concat(frames, ignore_index=True) if isinstance(frames, list) else frames
        frame.to_csv(folder / f"b{block:04d}.csv", index=False)
    return rows, files


def _assign_encounter_ids(enc: pd.DataFrame, records: pd.DataFrame, block: int) -> None:
    hospital = records.loc[enc["record"], "hospital_id"].to_numpy()
    order = enc.assign(_h=hospital).sort_values(["_h", "admit_time", "record"], kind="stable")
    seq = order.groupby("_h").cumcount().reindex(enc.index)
    enc["encounter_id"] = (
        pd.Series(hospital, index=enc.index).str[1:] + f"{block:04d}E" + seq.map(lambda i: f"{i + 1:07d}")
    )


def _truth_tables(persons: pd.DataFrame, records: pd.DataFrame, clinical: Clinical) -> dict:
    enc = clinical.encounters
    ids = enc.join(records[["hospital_id", "mrn", "person_id"]], on="record")
    inpatient = enc["encounter_type"] == "inpatient"
    outcomes = ids.loc[
        inpatient,
        [
            "person_id",
            "hospital_id",
            "admit_time",
            "discharge_time",
            "died",
            "mortality_probability",
            "readmission_probability",
            "readmitted",
        ],
    ].copy()
    outcomes.insert(2, "encounter_id", enc.loc[inpatient, "encounter_id"])
    return {
        "persons": persons.drop(columns=["home", "second"]),
        "patient_records": records[
            ["hospital_id", "mrn", "person_id", "primary", "noise", "name", "national_id", "birth_date", "phone"]
        ],
        "outcomes": outcomes,
        "note_identifiers": clinical.note_identifiers.assign(
            note_id=enc.loc[clinical.note_identifiers["encounter"], "encounter_id"].to_numpy() + "-N1",
            hospital_id=ids.loc[clinical.note_identifiers["encounter"], "hospital_id"].to_numpy(),
        ).drop(columns=["encounter"]),
    }


# --- one hospital's tables in its dialect ---------------------------------------------------------


def _hospital_tables(
    rng, clinical: Clinical, records: pd.DataFrame, hid: str, dialect: Dialect, config: GeneratorConfig, block: int
) -> dict:
    """entity -> (string frame in FIELDS order, file day per row, extra per-row context or None)."""
    enc_all = clinical.encounters
    mine = (records.loc[enc_all["record"], "hospital_id"] == hid).to_numpy()
    enc = enc_all[mine]
    rec = records[records["hospital_id"] == hid]
    t = lambda values: format_times(values, dialect)  # noqa: E731
    hl7_time = lambda values: format_times(values, fmt="%Y%m%d%H%M%S")  # noqa: E731
    mrn_of = records["mrn"]
    registered = enc.groupby("record")["admit_time"].min()
    reg_time = rec.index.map(registered).fillna(config.end - pd.Timedelta(days=config.history_days))
    reg_time = pd.Series(pd.to_datetime(reg_time), index=rec.index)
    sex = np.where(rec["sex"] == "M", dialect.sex[0], dialect.sex[1])
    tables = {
        "patient": (
            pd.DataFrame(
                {
                    "mrn": rec["mrn"],
                    "name": rec["name"].map(pinyin) if dialect.pinyin_names else rec["name"],
                    "national_id": rec["national_id"],
                    "sex": sex,
                    "birth_date": format_times(rec["birth_date"], dialect, True),
                    "phone": rec["phone"],
                    "address": rec["address"],
                    "updated_at": t(reg_time),
                }
            ),
            reg_time,
            None,
        )
    }
    inpatient = enc["encounter_type"] == "inpatient"
    tables["encounter"] = (
        pd.DataFrame(
            {
                "encounter_id": enc["encounter_id"],
                "mrn": mrn_of.loc[enc["record"]].to_numpy(),
                "encounter_type": enc["encounter_type"].map(dialect.encounter_types),
                "admission_type": enc["admission_type"],
                "department": enc["department"],
                "ward": enc["ward"],
                "bed": enc["bed"],
                "admit_time": t(enc["admit_time"]),
                "discharge_time": t(enc["discharge_time"].where(inpatient)),
                "discharge_disposition": enc["discharge_disposition"],
                "status": dialect.status[0],
                "updated_at": t(enc["discharge_time"]),
            }
        ),
        enc["discharge_time"],
        None,
    )
    tables.update(_event_tables(clinical, enc, records, dialect, t, hl7_time))
    lab_values = tables.pop("_lab_values").assign(hospital_id=hid)
    codes = tables.pop("_codes").assign(hospital_id=hid)
    resends = []
    for entity in RESENT_ENTITIES:
        frame, times, extra = tables[entity]
        formatter = hl7_time if dialect.formats[entity] == "hl7v2" else t
        tables[entity], found = _with_resends(
            rng, entity, frame, pd.to_datetime(times), extra, dialect, config, formatter
        )
        resends.extend(found)
    resend_frame = pd.DataFrame(resends, columns=["entity", "record_id", "kind", "day", "field", "new_value"])
    corrected = resend_frame[(resend_frame["entity"] == "lab_result") & (resend_frame["kind"] == "corrected")]
    if not corrected.empty:  # the truth is the corrected value
        factor = lab_values.set_index("result_id")["factor"]
        lab_values = lab_values.set_index("result_id")
        lab_values.loc[corrected["record_id"], "value"] = (
            corrected.set_index("record_id")["new_value"].astype(float) / factor.loc[corrected["record_id"]]
        ).round(4)
        lab_values = lab_values.reset_index()
    out = {}
    for entity, (frame, times, extra) in tables.items():
        out[entity] = (frame.reset_index(drop=True), file_days(times, config), extra)
    out["_lab_values"] = lab_values.drop(columns=["factor"]).assign(block=block)
    out["_codes"] = codes
    out["_resends"] = resend_frame.assign(hospital_id=hid)
    return out


def _event_tables(clinical: Clinical, enc: pd.DataFrame, records: pd.DataFrame, dialect: Dialect, t, hl7_time) -> dict:
    """entity -> (string frame, event times, extra) for every event table of one hospital."""
    ids = enc["encounter_id"]
    mrn = pd.Series(records["mrn"].loc[enc["record"]].to_numpy(), index=enc.index)

    def of(events: pd.DataFrame) -> pd.DataFrame:
        return events[events["encounter"].isin(enc.index)]

    def rows(entity: str, events: pd.DataFrame, suffix, time: pd.Series, fmt=t, extra=None, **fields) -> tuple:
        """One row per event: its id (encounter id + suffix), encounter, MRN, the given fields, update time."""
        encounter = events["encounter"]
        own = {
            ID_FIELDS[entity]: ids.loc[encounter].to_numpy() + np.asarray(suffix, dtype=object),
            "encounter_id": ids.loc[encounter].to_numpy(),
            "mrn": mrn.loc[encounter].to_numpy(),
            "updated_at": fmt(time).to_numpy(),
            **{name: np.asarray(value) if not isinstance(value, str) else value for name, value in fields.items()},
        }
        return pd.DataFrame({name: own[name] for name in FIELDS[entity]}), time, extra

    def numbered(events: pd.DataFrame, prefix: str) -> np.ndarray:
        return (prefix + events.groupby("encounter").cumcount().add(1).astype(str)).to_numpy()

    dx = of(clinical.diagnoses)
    tables = {
        "diagnosis": rows("diagnosis", dx, ("-D" + dx["rank"].astype(str)).to_numpy(), dx["time"],
                          icd_code=dx["code"].map(lambda c: _icd(c, dialect.icd_style)), diagnosis_name=dx["name"],
                          diagnosis_time=t(dx["time"]), status=dialect.status[0]),
    }
    pr = of(clinical.procedures)
    tables["procedure"] = rows("procedure", pr, "-P1", pr["time"], procedure_code=pr["code"],
                               procedure_name=pr["name"], procedure_time=t(pr["time"]))
    labs = of(clinical.labs)
    local = labs["test"].map(dialect.labs)
    factor = local.map(lambda c: c.factor_from_canonical).to_numpy(dtype=float)
    low = labs["test"].map(lambda x: REFERENCE[x][0]).to_numpy() * factor
    high = labs["test"].map(lambda x: REFERENCE[x][1]).to_numpy() * factor
    local_value = labs["value"].to_numpy() * factor
    digits = np.where(factor < 0.5, 2, np.where(factor > 2, 0, 1))
    hl7 = dialect.formats["lab_result"] == "hl7v2"
    time_fmt = hl7_time if hl7 else t
    tables["lab_result"] = rows(
        "lab_result", labs, numbered(labs, "-L"), labs["time"], fmt=time_fmt,
        extra=_hl7_context(enc, labs, records) if hl7 else None,
        test_code=local.map(lambda c: c.code), test_name=local.map(lambda c: c.name),
        value=[f"{v:.{d}f}" for v, d in zip(local_value, digits, strict=True)], unit=local.map(lambda c: c.unit),
        reference_range=[f"{a:.{d}f}-{b:.{d}f}" for a, b, d in zip(low, high, digits, strict=True)],
        abnormal_flag=np.where(local_value > high, "H", np.where(local_value < low, "L", "")),
        result_time=time_fmt(labs["time"]), status=dialect.status[0])
    tables["_lab_values"] = pd.DataFrame({
        "result_id": tables["lab_result"][0]["result_id"].to_numpy(), "test": labs["test"].to_numpy(),
        "loinc_code": labs["test"].map(lambda x: LABS[x][0]).to_numpy(),
        "unit": labs["test"].map(lambda x: LABS[x][1]).to_numpy(), "value": labs["value"].to_numpy(),
        "local_code": local.map(lambda c: c.code).to_numpy(), "factor": factor})
    vitals = of(clinical.vitals)
    vlocal = vitals["measure"].map(dialect.vitals)
    tables["vital_sign"] = rows(
        "vital_sign", vitals, numbered(vitals, "-V"), vitals["time"], extra=vitals["measure"].reset_index(drop=True),
        measure_code=vlocal.map(lambda c: c.code), measure_name=vlocal.map(lambda c: c.name),
        value=[f"{v:g}" for v in vitals["value"]], unit=vlocal.map(lambda c: c.unit), measured_at=t(vitals["time"]))
    meds = of(clinical.medications)
    drug, mlocal = meds["drug"].map(DRUGS), meds["drug"].map(dialect.drugs)
    tables["medication"] = rows(
        "medication", meds, numbered(meds, "-M"), meds["start"], drug_code=mlocal.map(lambda c: c.code),
        drug_name=mlocal.map(lambda c: c.name), dose=drug.map(lambda d: str(d[2])), dose_unit=drug.map(lambda d: d[3]),
        route=drug.map(lambda d: d[4]), frequency=drug.map(lambda d: d[5]), start_time=t(meds["start"]),
        end_time=t(meds["end"]), status=dialect.status[0])
    tables["_codes"] = pd.concat([
        _codes("diagnosis", tables["diagnosis"][0], "icd_code", "ICD10", dx["code"]),
        _codes("procedure", tables["procedure"][0], "procedure_code", "ICD9CM3", pr["code"]),
        _codes("medication", tables["medication"][0], "drug_code", "ATC", meds["drug"].map(lambda d: DRUGS[d][0])),
        _codes("vital_sign", tables["vital_sign"][0], "measure_code", "LOINC",
               vitals["measure"].map(lambda m: VITALS[m][0]), vitals["value"],
               vitals["measure"].map(lambda m: VITALS[m][1])),
    ], ignore_index=True)
    im = of(clinical.imaging)
    tables["imaging_report"] = rows("imaging_report", im, "-R1", im["time"], modality=im["modality"],
                                    body_part=im["body_part"], report_text=im["text"], report_time=t(im["time"]))
    notes = of(clinical.notes)
    tables["note"] = rows("note", notes, "-N1", notes["time"], note_type="出院小结", note_text=notes["text"],
                          note_time=t(notes["time"]))
    return tables


def _codes(entity: str, frame: pd.DataFrame, code_field: str, system: str, codes, values=None, units=None):
    """Truth: the standard code (and canonical value and unit) behind each record's local code."""
    return pd.DataFrame({
        "entity": entity, "record_id": frame[ID_FIELDS[entity]].to_numpy(),
        "local_code": frame[code_field].to_numpy(), "system": system, "code": np.asarray(codes),
        "value": np.asarray(values) if values is not None else np.nan,
        "unit": np.asarray(units) if units is not None else ""})


def _hl7_context(enc: pd.DataFrame, labs: pd.DataFrame, records: pd.DataFrame) -> pd.DataFrame:
    """Per lab row: what the PID and PV1 segments carry."""
    stay = enc.loc[labs["encounter"]]
    person = records.loc[stay["record"]]
    return pd.DataFrame(
        {
            "national_id": person["national_id"].to_numpy(),
            "name": person["name"].to_numpy(),
            "birth_date": pd.to_datetime(person["birth_date"]).dt.strftime("%Y%m%d").to_numpy(),
            "sex": person["sex"].to_numpy(),
            "address": person["address"].to_numpy(),
            "phone": person["phone"].to_numpy(),
            "patient_class": stay["encounter_type"]
            .map({"inpatient": "I", "outpatient": "O", "emergency": "E"})
            .to_numpy(),
            "ward": stay["ward"].to_numpy(),
            "bed": stay["bed"].to_numpy(),
        }
    )


def _with_resends(
    rng, entity: str, frame: pd.DataFrame, times: pd.Series, extra, dialect: Dialect, config: GeneratorConfig, t
):
    """Append, on each later day, resends of earlier records: corrected values or cancellations."""
    if config.days < 2 or frame.empty:
        return (frame, times, extra), []
    frame = frame.reset_index(drop=True)
    times = times.reset_index(drop=True)
    extra = extra.reset_index(drop=True) if extra is not None else None
    day_of = file_days(times, config)
    parts, time_parts, extra_parts, found = [frame], [times], [extra], []
    for k in range(1, config.days):
        day = config.first_day + dt.timedelta(days=k)
        earlier = np.flatnonzero(day_of < day)
        today = int((day_of == day).sum())
        count = min(len(earlier), math.ceil(config.resend_rate * max(today, 1)) if today or k == 1 else 0)
        if count == 0:
            continue
        chosen = rng.choice(earlier, count, replace=False)
        resent = frame.iloc[chosen].copy()
        when = pd.Timestamp(day) + pd.Timedelta(hours=9)
        cancel = (rng.random(count) < 0.3) | (entity == "diagnosis")
        resent.loc[:, "status"] = np.where(cancel, dialect.status[1], resent["status"])
        changed_field = {"lab_result": "value", "encounter": "department", "medication": "dose"}.get(entity, "status")
        if entity == "lab_result":
            new = [f"{float(v) * 1.1:.2f}" for v in resent["value"]]
        elif entity == "encounter":
            new = [d + "(更正)" for d in resent["department"]]
        elif entity == "medication":
            new = [str(float(d) * 2) for d in resent["dose"]]
        else:
            new = list(resent["status"])
        resent.loc[~cancel, changed_field] = np.array(new, dtype=object)[~cancel]
        resent.loc[:, "updated_at"] = t(pd.Series([when] * count, index=resent.index))
        for (_, row), is_cancel in zip(resent.iterrows(), cancel, strict=True):
            found.append(
                (
                    entity,
                    row[ID_FIELDS[entity]],
                    "cancelled" if is_cancel else "corrected",
                    str(day),
                    "status" if is_cancel else changed_field,
                    row["status" if is_cancel else changed_field],
                )
            )
        parts.append(resent)
        time_parts.append(pd.Series([when] * count))
        extra_parts.append(extra.iloc[chosen] if extra is not None else None)
    frame = pd.concat(parts, ignore_index=True)
    times = pd.concat(time_parts, ignore_index=True)
    extra = pd.concat(extra_parts, ignore_index=True) if extra is not None else None
    return (frame, times, extra), found


def file_days(times, config: GeneratorConfig) -> np.ndarray:
    """The landing day of each row: its own day, or day 1 for anything up to day 1 (the full history)."""
    days = pd.to_datetime(pd.Series(times)).to_numpy().astype("datetime64[D]")
    return np.maximum(days, np.datetime64(config.first_day, "D")).astype(object)


def _icd(code: str, style: str) -> str:
    if style == "nodot":
        return code.replace(".", "")
    if style == "extension":
        head, _, tail = code.partition(".")
        return f"{head}.{tail.ljust(3, '0')}" if tail else f"{head}.x00"
    return code


# --- writing one file ----------------------------------------------------------------------------


def _write(
    rng,
    out: Path,
    hid: str,
    dialect: Dialect,
    entity: str,
    frame: pd.DataFrame,
    extra,
    day,
    block: int,
    config: GeneratorConfig,
) -> list[tuple]:
    fmt = dialect.formats[entity]
    measures = extra if entity == "vital_sign" else None
    frame, value_defects = D.plant_values(rng, frame, entity, config.defect_rate, measures)
    line_defects = D.choose_lines(
        rng, len(frame), config.defect_rate, D.LINE_DEFECTS[fmt], {row for _, row in value_defects}
    )
    folder = out / "landing" / hid / str(day)
    if fmt == "fhir_ndjson":
        name = f"{entity}-b{block:04d}.ndjson"
        resources = [(i, fhir_resource(entity, row, hid)) for i, row in enumerate(frame.to_dict("records"))]
        lines = write_ndjson(folder / name, resources, line_defects)
    elif fmt == "hl7v2":
        name = f"{entity}-b{block:04d}.hl7"
        obx_lines: dict[int, int] = {}
        lines = write_hl7(folder / name, frame.assign(_position=np.arange(len(frame))), extra.set_axis(frame.index),
                          hid, line_defects, obx_lines)
    else:
        name = f"{entity}-b{block:04d}.{dialect.extension(entity)}"
        drift = (
            hid == hospital_id(0)
            and entity == "encounter"
            and block == 0
            and day == config.end_date - dt.timedelta(days=1)
        )
        lines = write_csv(folder / name, frame, entity, dialect, line_defects, drift)
        if drift:
            lines.append((1, "schema_drift", -1))
    relative = f"{hid}/{day}/{name}"
    truth = [
        (relative, line, kind, hid, entity, frame.iloc[pos][ID_FIELDS[entity]] if pos >= 0 else "")
        for line, kind, pos in lines
    ]
    duplicates = sorted(pos for _, kind, pos in lines if kind == "exact_duplicate")
    for kind, position in value_defects:
        line = obx_lines[position] if fmt == "hl7v2" else _line_of(position, duplicates, fmt)
        truth.append((relative, line, kind, hid, entity, frame.iloc[position][ID_FIELDS[entity]]))
    return truth


def _line_of(position: int, duplicate_positions: list[int], fmt: str) -> int:
    """Line of a row in a CSV or NDJSON file: header and earlier duplicate lines counted."""
    return position + bisect.bisect_left(duplicate_positions, position) + (2 if fmt == "csv" else 1)


# --- file-level defects and the summary ----------------------------------------------------------


def _file_defects(config: GeneratorConfig, out: Path) -> int:
    """An empty export, a gzip file cut short and a file no contract expects, once per region (on the last day)."""
    last = str(config.end_date - dt.timedelta(days=1))
    rows = []
    stray = out / "landing" / hospital_id(config.hospitals - 1) / last / "export-manifest.txt"
    stray.parent.mkdir(parents=True, exist_ok=True)
    stray.write_text("export finished; files: see folder\n", encoding="utf-8")  # what export tools leave behind
    rows.append((f"{hospital_id(config.hospitals - 1)}/{last}/{stray.name}", 0, "unmatched_file",
                 hospital_id(config.hospitals - 1), "", ""))
    hid, dialect = hospital_id(0), config.dialect(0)
    empty = out / "landing" / hid / last / f"lab_result-empty.{dialect.extension('lab_result')}"
    empty.parent.mkdir(parents=True, exist_ok=True)
    empty.write_bytes(b"")
    rows.append((f"{hid}/{last}/{empty.name}", 0, "empty_file", hid, "lab_result", ""))
    gz = [h for h in range(config.hospitals) if config.dialect(h).gzip]
    if gz:
        h = gz[0]
        hid, dialect = hospital_id(h), config.dialect(h)
        sources = sorted((out / "landing" / hid).rglob("patient-*.gz"))
        if sources:
            data = sources[0].read_bytes()
            target = out / "landing" / hid / last / "patient-truncated.csv.gz"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data[: max(20, len(data) // 2)])
            rows.append((f"{hid}/{last}/{target.name}", 0, "truncated_gzip", hid, "patient", ""))
    folder = out / "truth" / "defects"
    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=["file", "line", "kind", "hospital_id", "entity", "record_id"]).to_csv(
        folder / "files.csv", index=False
    )
    return len(rows)


def _summarize(config: GeneratorConfig, out: Path, rows: dict[str, int], files: int,
               by_hospital: dict[str, dict[str, int]]) -> dict:
    defects = pd.concat([pd.read_csv(f, dtype=str) for f in sorted((out / "truth" / "defects").glob("*.csv"))])
    departments = [
        {"hospital_id": hospital_id(h), "department": d, "beds": beds}
        for h in range(config.hospitals)
        for d, (beds, _, _) in DEPARTMENTS.items()
    ]
    pd.DataFrame(departments).to_csv(out / "truth" / "departments.csv", index=False)
    summary = {
        "config": {k: str(v) if isinstance(v, dt.date) else v for k, v in asdict(config).items()},
        "dialects": {hospital_id(h): config.dialect(h).name for h in range(config.hospitals)},
        "rows": rows,
        "rows_by_hospital": by_hospital,
        "files": files,
        "defects": defects["kind"].value_counts().sort_index().to_dict(),
        "lab_tests": {k: {"loinc": v[0], "unit": v[1]} for k, v in LABS.items()},
        "vital_signs": {k: {"loinc": v[0], "unit": v[1]} for k, v in VITALS.items()},
        "fields": FIELDS,
    }
    (out / "truth" / "summary.json").write_text(json.dumps(summary, ensure_ascii=False, indent=1, default=int))
    return summary


def read_truth(truth: Path, table: str) -> pd.DataFrame:
    """All blocks of one truth table (tests and measurements use this; the pipeline never does)."""
    return pd.concat(
        [pd.read_csv(f, dtype=str, keep_default_na=False) for f in sorted((truth / table).glob("*.csv"))],
        ignore_index=True,
    )
