"""The bad-input corpus: small files of every kind of bad input a hospital export has sent us, written next to a
few good files cut from the generated region, with what the lakehouse must make of each.

`build(landing, templates)` writes day 1 (and `day_two` the files of the second delivery: renames and duplicates
of day 1); each Case names its files and the expected outcome: the ledger status and a reason fragment for a
bad file, or the quarantine reasons for its bad lines (layer, reason fragment, line). Cases that are about the
configuration rather than a file (a contract pointing at a missing folder) are tested beside the corpus.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass, field
from pathlib import Path

DAY1, DAY2 = "2026-02-01", "2026-02-02"


@dataclass(frozen=True)
class Case:
    kind: str
    file: str  # relative to the landing folder
    status: str  # the ledger status the file must end with: landed, failed, unmatched, duplicate
    reason: str = ""  # a fragment of the file's ledger reason (failed, unmatched, duplicate)
    quarantined: dict[int, str] = field(default_factory=dict)  # bronze source line -> reason fragment
    silver: str = ""  # the DQ rule refine flags the file's one row with


def _lines(templates: Path, hospital: str, entity: str, suffix: str, keep: int,
           encoding: str = "utf-8", delimiter: bytes = b",") -> list[bytes]:
    """The header and up to `keep` - 1 good lines of the region's first file of an entity (the generator plants
    bad lines in its files too: those are left out, so every bad line here is one the corpus meant)."""
    source = sorted((templates / hospital).glob(f"*/{entity}-*{suffix}"))[0]
    data = gzip.decompress(source.read_bytes()) if suffix.endswith(".gz") else source.read_bytes()
    lines = data.splitlines(keepends=True)
    if suffix.endswith(".ndjson"):
        good = [line for line in lines if _json(line)]
    else:
        good = [line for line in lines[1:] if _decodes(line, encoding) and line.count(delimiter) == lines[0].count(
            delimiter)]
        good.insert(0, lines[0])
    return good[:keep]


def _hl7_messages(templates: Path, keep: int) -> list[bytes]:
    """Whole messages of the region's first HL7 file whose every OBX has its result id (OBX-18)."""
    source = sorted((templates / "H04").glob("*/lab_result-*.hl7"))[0]
    messages = [b"MSH|" + m for m in source.read_bytes().split(b"MSH|")[1:]]
    return [m for m in messages if all(len(s.split(b"|")) > 18 and s.split(b"|")[18]
                                       for s in m.splitlines() if s.startswith(b"OBX|"))][:keep]


def _json(line: bytes) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


def _decodes(line: bytes, encoding: str) -> bool:
    try:
        line.decode(encoding)
    except UnicodeDecodeError:
        return False
    return True


def _write(landing: Path, relative: str, data: bytes, zipped: bool = False) -> str:
    path = landing / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data, mtime=0) if zipped else data)
    return relative


def build(landing: Path, templates: Path) -> list[Case]:
    """Day 1 of the corpus under `landing` (hospital folders as in the region), its cases."""
    h01 = _lines(templates, "H01", "patient", ".csv", 200)  # header + patients, UTF-8 CSV
    enc = _lines(templates, "H01", "encounter", ".csv", 6)
    h02 = _lines(templates, "H02", "patient", ".tsv", 4, "gb18030", b"\t")  # GB18030 TSV
    h04 = _lines(templates, "H04", "patient", ".csv.gz", 40)
    hl7 = _hl7_messages(templates, 40)
    fhir = _lines(templates, "H05", "patient", ".ndjson", 100)
    header, row = h01[0], h01[1]
    cases: list[Case] = []

    def case(kind: str, hospital: str, name: str, data: bytes, status: str = "landed", zipped: bool = False,
             **expect) -> None:
        cases.append(Case(kind, _write(landing, f"{hospital}/{DAY1}/{name}", data, zipped), status, **expect))

    # files that land whole: the baseline, and shapes a reader must take in its stride
    case("good_files", "H01", "patient-c0000.csv", b"".join(h01))
    case("utf8_bom_and_crlf", "H01", "patient-c0001.csv",
         b"\xef\xbb\xbf" + b"".join(line.rstrip(b"\r\n") + b"\r\n" for line in h01[:3]))
    case("header_only_one_line_file", "H01", "patient-c0002.csv", header)
    case("gb18030_as_declared", "H02", "patient-c0000.tsv", b"".join(h02))
    case("gzip_as_declared", "H04", "patient-c0003.csv.gz", b"".join(h04), zipped=True)
    case("hl7_as_declared", "H04", "lab_result-c0001.hl7", b"".join(hl7))
    # whole files refused, each with its reason in the ledger and the other files going on
    case("zero_byte_file", "H01", "patient-c0003.csv", b"", status="failed", reason="empty file (0 bytes)")
    case("zero_byte_gzip", "H04", "patient-c0000.csv.gz", b"", status="failed", reason="empty file (0 bytes)")
    case("truncated_gzip", "H04", "patient-c0001.csv.gz", gzip.compress(b"".join(h04))[:40], status="failed",
         reason="unreadable: ")
    case("not_gzip_at_all", "H04", "patient-c0002.csv.gz", b"".join(h04), status="failed", reason="unreadable: ")
    case("unreadable_bytes", "H01", "patient-c0004.csv", bytes(range(256)) * 8, status="failed",
         reason="the header line lacks the contract")
    case("header_missing_a_mapped_column", "H01", "patient-c0005.csv",
         header.replace(b",id_number", b"") + b"".join(line.split(b",", 3)[0] + b"\n" for line in h01[1:]),
         status="failed", reason="id_number")
    case("wrong_delimiter", "H02", "patient-c0001.tsv", b"".join(line.replace(b"\t", b",") for line in h02),
         status="failed", reason="the header line lacks the contract")
    case("unmatched_file_name", "H01", "patients_export.xlsx", b"PK\x03\x04", status="unmatched",
         reason="matches no entity pattern")
    case("unknown_hospital_folder", "H99", "patient-c0000.csv", b"".join(h01), status="unmatched",
         reason="no source contract for hospital folder 'H99'")
    # bad lines in good files: quarantined with the reason at their line, the file's other lines land
    gb_line = "010099999999,张三,110101199001010011,M,1990-01-01,13800000000,北京市,2023-01-01 00:00:00\n"
    case("mixed_encodings_in_one_file", "H01", "patient-c0006.csv",
         b"".join([*h01[:3], gb_line.encode("gb18030"), *h01[3:]]), quarantined={4: "wrong encoding"})
    case("unterminated_quote", "H01", "patient-c0007.csv",
         b"".join([*h01[:2], b'010099999998,"unterminated,110101199001010029,M,1990-01-01,1,x,2023-01-01 00:00:00\n',
                   *h01[2:4]]), quarantined={3: "a quote that is never closed"})
    case("truncated_line", "H01", "patient-c0008.csv", b"".join([*h01[:2], "010099999997,王\n".encode(), *h01[2:4]]),
         quarantined={3: "malformed line: 2 fields where the header has 8"})
    giant = row.rstrip(b"\n").split(b",")
    giant[6] = "长".encode() * 700_000  # a 2 MB address
    case("giant_line", "H01", "patient-c0009.csv", b"".join([header, b",".join(giant) + b"\n", *h01[2:4]]),
         quarantined={2: "record longer than 1048576 bytes"})
    case("blank_lines", "H01", "patient-c0010.csv",
         b"".join([*h01[:2], b"\n", b"   \n", *h01[2:4], b"010099999996\n"]),
         quarantined={7: "malformed line: 1 fields where the header has 8"})
    orphan = hl7[0][hl7[0].index(b"\n") + 1:]  # a message without its MSH segment, alone in its file
    case("hl7_without_msh", "H04", "lab_result-c0000.hl7", orphan, quarantined={1: "text before the first MSH"})
    case("fhir_unknown_resource_type", "H05", "patient-c0000.ndjson",
         b"".join([fhir[0], json.dumps({"resourceType": "Spaceship", "id": "x1"}).encode() + b"\n", *fhir[1:]]),
         quarantined={2: "resourceType"})
    case("fhir_invalid_json", "H05", "patient-c0001.ndjson", b"".join([fhir[0], b'{"resourceType": "Pat\n']),
         quarantined={2: "invalid JSON"})
    # values bronze keeps as sent and refine refuses: a date in the year 0000, a date in the future
    zero = enc[1].decode().split(",")
    future = enc[2].decode().split(",")
    columns = enc[0].decode().rstrip("\n").split(",")
    zero[columns.index("admit_time")] = "0000-01-01 08:00:00"
    future[columns.index("admit_time")] = "2099-01-01 08:00:00"
    case("date_in_year_0000", "H01", "encounter-c0000.csv", b"".join([enc[0], ",".join(zero).encode()]),
         silver="encounter_admit_time_parsed")
    case("date_in_the_future", "H01", "encounter-c0001.csv", b"".join([enc[0], ",".join(future).encode()]),
         silver="encounter_admit_time_not_in_future")
    born = row.decode().split(",")
    born[header.decode().split(",").index("birth_date")] = "0000-01-01"
    case("birth_date_in_year_0000", "H01", "patient-c0011.csv", b"".join([header, ",".join(born).encode()]),
         silver="no birth year")
    return cases


def day_two(landing: Path) -> list[Case]:
    """The second delivery: a day-1 file again under a second name, and a day-1 file renamed after ingest."""
    first = landing / "H01" / DAY1 / "patient-c0000.csv"
    copy = _write(landing, f"H01/{DAY2}/patient-c0100.csv", first.read_bytes())
    renamed = landing / "H05" / DAY1 / "patient-c0000.ndjson"
    target = landing / "H05" / DAY2 / "patient-c0100.ndjson"
    target.parent.mkdir(parents=True, exist_ok=True)
    renamed.rename(target)
    return [Case("duplicate_file_under_two_names", copy, "duplicate", reason="same bytes as H01/" + DAY1),
            Case("file_renamed_after_ingest", str(target.relative_to(landing)), "duplicate",
                 reason="same bytes as H05/" + DAY1)]
