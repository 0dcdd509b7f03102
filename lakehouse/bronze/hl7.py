"""HL7 v2 in Spark built-ins: split a message into segments, find fields, undo escape sequences.

A field reference is `SEG-field[repetition].component.subcomponent` (1-based, as HL7 numbers them;
`PID-3[2].1` is the first component of the second repetition of PID-3). The standard encoding
characters `|^~\\&` are assumed (MSH-2 = `^~\\&`), as every feed of the region sends them.
"""

from __future__ import annotations

from pyspark.sql import Column
from pyspark.sql import functions as F

from lakehouse.config import HL7_FIELD

SEGMENT_BREAK = r"\r\n|\r|\n"
_PLACEHOLDER = "\ue000"  # a private-use character stands for an escaped backslash while the others are undone
# (Java regex matching the escape sequence, the character it stands for)
ESCAPES = ((r"\\F\\", "|"), (r"\\S\\", "^"), (r"\\T\\", "&"), (r"\\R\\", "~"))


def segments(message: Column) -> Column:
    """The message's segments, one per line (CR, LF or CRLF), trailing line breaks dropped."""
    return F.split(F.regexp_replace(message, r"[\r\n]+$", ""), SEGMENT_BREAK)


def unescape(value: Column) -> Column:
    r"""Undo \F\ \S\ \T\ \R\ and \E\ (\E\ first, into a placeholder, so an escaped backslash never
    starts another escape sequence)."""
    out = F.regexp_replace(value, r"\\E\\", _PLACEHOLDER)
    for pattern, raw in ESCAPES:
        out = F.regexp_replace(out, pattern, raw)
    return F.regexp_replace(out, _PLACEHOLDER, r"\\")


def parse_reference(reference: str) -> tuple[str, int, int, int | None, int | None]:
    """`PID-3[2].1` -> ("PID", 3, 2, 1, None)."""
    found = HL7_FIELD.match(reference)
    if found is None:
        raise ValueError(f"not an HL7 field reference: {reference!r}")
    number = lambda name: int(found[name]) if found[name] else None  # noqa: E731
    return found["segment"], int(found["field"]), number("repeat") or 1, number("component"), number("subcomponent")


def field(segment: Column, reference: str) -> Column:
    """The value at `reference` in `segment` (a segment's text): null when absent, "" when present but empty."""
    name, number, repeat, component, subcomponent = parse_reference(reference)
    if name == "MSH" and number == 1:
        return F.when(segment.isNotNull(), F.lit("|"))
    # in MSH the field separator itself is MSH-1, so MSH-n sits one place earlier than in other segments
    position = number if name == "MSH" else number + 1
    value = F.try_element_at(F.split(segment, r"\|"), F.lit(position))
    if not (name == "MSH" and number == 2):
        value = F.try_element_at(F.split(value, "~"), F.lit(repeat))
        if component is not None:
            value = F.try_element_at(F.split(value, r"\^"), F.lit(component))
        if subcomponent is not None:
            value = F.try_element_at(F.split(value, "&"), F.lit(subcomponent))
    return unescape(value)
