"""Planted record-level defects: what real feeds get wrong, at configurable rates, with ground truth.

Value defects change a field of a rendered (string) row; line defects change the bytes of a line.
Each planted defect is reported as (kind, row position) so the writer can record its file and line.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from lakehouse.synth.dialects import ID_FIELDS, TIME_FIELDS

VALUE_DEFECTS = ("unparseable_date", "impossible_value", "unknown_code", "missing_required", "orphan")
LINE_DEFECTS = {"csv": ("exact_duplicate", "truncated_line", "wrong_encoding_line"),
                "hl7v2": ("exact_duplicate", "malformed_segment"),
                "fhir_ndjson": ("exact_duplicate", "invalid_json")}
FILE_DEFECTS = ("empty_file", "truncated_gzip", "schema_drift", "unmatched_file")
BAD_DATES = np.array(["2025-13-45 25:61:00", "N/A", "0000-00-00", "31/02/2025 8点"])
CODE_FIELDS = {"lab_result": "test_code", "vital_sign": "measure_code", "medication": "drug_code",
               "diagnosis": "icd_code", "procedure": "procedure_code"}
IMPOSSIBLE = {"temperature": "60.0", "heart_rate": "400", "sbp": "-20", "dbp": "-5", "spo2": "130", "resp_rate": "-3"}


def applicable(entity: str) -> tuple[str, ...]:
    kinds = ["unparseable_date", "missing_required"]
    if entity in ("lab_result", "vital_sign", "encounter", "patient"):
        kinds.append("impossible_value")
    if entity in CODE_FIELDS:
        kinds.append("unknown_code")
    if entity not in ("patient", "encounter"):
        kinds.append("orphan")
    return tuple(kinds)


def plant_values(rng: np.random.Generator, frame: pd.DataFrame, entity: str, rate: float,
                 measures: pd.Series | None = None) -> tuple[pd.DataFrame, list[tuple[str, int]]]:
    """Change fields of ~rate of the rows per applicable kind (a row gets at most one defect).

    `measures` (canonical vital names, aligned with frame) picks an impossible value per measure.
    Returns the changed frame and [(kind, row position)].
    """
    frame = frame.copy()
    n = len(frame)
    taken = np.zeros(n, dtype=bool)
    planted: list[tuple[str, int]] = []
    for kind in applicable(entity):
        chosen = (rng.random(n) < rate) & ~taken
        if kind == "impossible_value" and entity == "encounter":  # only stays have a discharge to invert
            chosen &= (frame["discharge_time"] != "").to_numpy()
        if not chosen.any():
            continue
        taken |= chosen
        rows = np.flatnonzero(chosen)
        column_of = frame.columns.get_loc
        if kind == "unparseable_date":
            frame.iloc[rows, column_of(TIME_FIELDS[entity])] = BAD_DATES[rng.integers(0, len(BAD_DATES), len(rows))]
        elif kind == "missing_required":
            frame.iloc[rows, column_of(ID_FIELDS[entity] if entity != "patient" else "mrn")] = ""
        elif kind == "unknown_code":
            frame.iloc[rows, column_of(CODE_FIELDS[entity])] = [f"ZZ{i:04d}" for i in rng.integers(0, 9999, len(rows))]
        elif kind == "orphan":
            frame.iloc[rows, column_of("encounter_id")] = [f"NOSUCH{i:08d}" for i in rng.integers(0, 10**8, len(rows))]
        elif kind == "impossible_value":
            _impossible(frame, entity, rows, measures)
        planted.extend((kind, int(r)) for r in rows)
    return frame, planted


def _impossible(frame: pd.DataFrame, entity: str, rows: np.ndarray, measures: pd.Series | None) -> None:
    if entity == "lab_result":
        frame.iloc[rows, frame.columns.get_loc("value")] = "-" + frame["value"].iloc[rows].str.lstrip("-")
    elif entity == "vital_sign":
        frame.iloc[rows, frame.columns.get_loc("value")] = [IMPOSSIBLE[m] for m in measures.iloc[rows]]
    elif entity == "encounter":  # discharge before admission
        admit, discharge = frame["admit_time"].iloc[rows].to_numpy(), frame["discharge_time"].iloc[rows].to_numpy()
        frame.iloc[rows, frame.columns.get_loc("admit_time")] = discharge
        frame.iloc[rows, frame.columns.get_loc("discharge_time")] = admit
    elif entity == "patient":  # born in the future: a negative age, in the hospital's own date format
        frame.iloc[rows, frame.columns.get_loc("birth_date")] = (
            frame["birth_date"].iloc[rows].str.replace(r"^(19|20)\d\d", "2099", regex=True))


def choose_lines(rng: np.random.Generator, n: int, rate: float, kinds: tuple[str, ...],
                 already: set[int]) -> dict[int, str]:
    """Row position -> line defect kind, for rows without a value defect."""
    chosen: dict[int, str] = {}
    for kind in kinds:
        for row in np.flatnonzero(rng.random(n) < rate):
            if int(row) not in already and int(row) not in chosen:
                chosen[int(row)] = kind
    return chosen
