"""The sample generator: dialects as claimed, deterministic, valid identifiers, refusals."""

from __future__ import annotations

import csv
import hashlib
import io

import pandas as pd
import pytest

from lakehouse.cli import main
from lakehouse.errors import UsageError
from lakehouse.synth.dialects import dialect_for
from lakehouse.synth.generator import generate, valid_national_id


def _digest(folder) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("gen") / "out", hospitals=3, patients=300, days=3, seed=3)


def test_same_seed_same_bytes_other_seed_other_bytes(small, tmp_path):
    again = generate(tmp_path / "again", hospitals=3, patients=300, days=3, seed=3)
    other = generate(tmp_path / "other", hospitals=3, patients=300, days=3, seed=4)
    assert _digest(small.out) == _digest(again.out)
    assert _digest(small.out) != _digest(other.out)


def test_each_hospital_file_decodes_in_its_dialect(small):
    for index, hospital in enumerate(small.hospitals):
        dialect = dialect_for(index)
        files = sorted((small.landing / hospital).rglob("*.*sv"))
        assert files, hospital
        for file in files:
            raw = file.read_bytes()
            assert raw.startswith(b"\xef\xbb\xbf") == (dialect.encoding == "utf-8-sig")
            text = raw.decode(dialect.encoding)
            header = next(csv.reader(io.StringIO(text), delimiter=dialect.delimiter))
            entity = file.name.split(".")[0]
            assert header == list(dialect.columns[entity].values())
        if dialect.encoding == "gb18030":  # really GB18030, not UTF-8
            with pytest.raises(UnicodeDecodeError):
                files[0].read_bytes().decode("utf-8")


def test_days_split_history_from_increments(small):
    days = sorted({p.parent.name for p in small.landing.rglob("*.*sv")})
    assert len(days) == 3
    day1 = [p for p in small.landing.rglob("*.*sv") if p.parent.name == days[0]]
    later = [p for p in small.landing.rglob("*.*sv") if p.parent.name != days[0]]
    assert sum(p.stat().st_size for p in day1) > 10 * sum(p.stat().st_size for p in later)


def test_ground_truth_identities_and_outcomes(small):
    persons = pd.read_csv(small.truth / "persons.csv", dtype={"national_id": str})
    assert persons["national_id"].map(valid_national_id).all()
    records = pd.read_csv(small.truth / "patient_records.csv")
    multi = records.groupby("person_id")["hospital_id"].nunique()
    assert 0.2 < (multi > 1).mean() < 0.4  # ~30% of persons seen in two hospitals
    outcomes = pd.read_csv(small.truth / "outcomes.csv")
    assert outcomes["true_probability"].between(0, 1).all() and len(outcomes) > 100


def test_bad_arguments_are_refused(small, tmp_path, capsys):
    with pytest.raises(UsageError, match="--patients must be a positive number"):
        generate(tmp_path / "x", patients=-1)
    with pytest.raises(UsageError, match="not empty"):
        generate(small.out)
    assert main(["generate", "--out", str(small.out), "--root", str(tmp_path / "r")]) == 2
    assert "not empty" in capsys.readouterr().err
