"""Pure column functions of the silver stage: Spark built-ins only, no Python UDFs."""

from __future__ import annotations

import re
from functools import reduce

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
ID_CHECK_CHARS = "10X98765432"
SEPARATOR = "|"

RECORD_KEY = "_record_key"  # the source id, or the file and line of a record sent without one


def clean_text(col: Column) -> Column:
    """Trim, fold full-width ASCII (Ｅ１１ -> E11) and ideographic spaces, collapse inner whitespace."""
    full = "".join(chr(c) for c in range(0xFF01, 0xFF5F)) + "\u3000"
    half = "".join(chr(c) for c in range(0x21, 0x7F)) + " "
    folded = F.translate(col, full, half)
    cleaned = F.trim(F.regexp_replace(folded, r"\s+", " "))
    return F.when(cleaned == "", None).otherwise(cleaned)


def record_key(source_id: str) -> Column:
    """The source id; a record sent without one is kept apart by its file and line (and flagged by a DQ rule),
    never merged with the hospital's other id-less records."""
    day_and_file = F.regexp_extract(F.col("_source_file"), r"([^/]+/[^/]+)$", 1)  # <landing>/<hospital>/<day>/<file>
    return F.coalesce(clean_text(F.col(source_id)),
                      F.concat(F.lit("line:"), day_and_file, F.lit(":"), F.col("_source_line")))


def parse_timestamp(col: Column, hospital: Column, formats: dict[str, str]) -> Column:
    """Parse with each hospital's declared format; unparseable values become null (flagged by DQ)."""
    expr, cleaned = None, clean_text(col)  # common to every branch: evaluated once
    for hospital_id, fmt in sorted(formats.items()):
        parsed = parse_time(cleaned, fmt)
        expr = F.when(hospital == hospital_id, parsed) if expr is None else expr.when(hospital == hospital_id, parsed)
    return expr if expr is not None else F.lit(None).cast("timestamp")


EPOCH_MS = "epoch_ms"
HOSPITAL_TIME_ZONE = "Asia/Shanghai"


def parse_time(value: Column, fmt: str) -> Column:
    """Wall-clock time at the hospital. Epoch milliseconds and times with an offset (2024-03-01T18:05:00+08:00)
    are instants: shifted to the hospital's zone (the session's zone is UTC)."""
    if fmt == EPOCH_MS:
        return F.from_utc_timestamp(F.timestamp_millis(value.try_cast("long")), HOSPITAL_TIME_ZONE)
    parsed = F.try_to_timestamp(value, F.lit(fmt))
    return F.from_utc_timestamp(parsed, HOSPITAL_TIME_ZONE) if has_offset(fmt) else parsed


EARLIEST_YEAR = 1900  # before it a time is a placeholder (0000-01-01, 1899-12-30), not an event or a birth


def plausible_times(df: DataFrame, columns: list[str]) -> DataFrame:
    """`columns` (parsed times) null where they fall before EARLIEST_YEAR: a year 0 is no event, and no Python
    client could even read it. Times in the future are kept; DQ rules flag them. A projection of its own, over
    columns parsed before it: Spark does not inline a costly expression into a projection that names it twice,
    so a time is still parsed once (inlined, the doubled parse outgrows the JVM's 64 KB method limit)."""
    return df.withColumns({c: F.when(F.year(c) >= EARLIEST_YEAR, F.col(c)) for c in columns})


def has_offset(fmt: str) -> bool:
    """Whether a Spark datetime pattern reads a zone or offset (letters outside quoted literals)."""
    unquoted = re.sub(r"'[^']*'", "", fmt)
    return any(letter in unquoted for letter in "XxZOVz")


def national_id_is_valid(col: Column) -> Column:
    """18-digit resident ID number with a valid ISO 7064 MOD 11-2 check character."""
    value = F.upper(clean_text(col))
    weighted = sum(F.substring(value, i + 1, 1).cast("int") * w for i, w in enumerate(ID_WEIGHTS))
    check = F.substring(F.lit(ID_CHECK_CHARS), (weighted % 11 + 1).cast("int"), 1)
    return F.coalesce(value.rlike(r"^[0-9]{17}[0-9X]$") & (F.substring(value, 18, 1) == check), F.lit(False))


def keyed_hash(key: bytes, *parts: Column) -> Column:
    """A pseudonymous key: HMAC-SHA256 (RFC 2104) under the deployment's secret over the parts joined by `|`,
    built from Spark's sha2 so it runs on the executors: H((K^opad) || H((K^ipad) || message)), in hex."""
    block = key.ljust(64, b"\0")
    inner_key, outer_key = bytes(b ^ 0x36 for b in block), bytes(b ^ 0x5C for b in block)
    message = F.encode(F.concat_ws(SEPARATOR, *[F.coalesce(p, F.lit("")) for p in parts]), "UTF-8")
    inner = F.unhex(F.sha2(F.concat(F.lit(inner_key), message), 256))
    return F.sha2(F.concat(F.lit(outer_key), inner), 256)


def normalize_icd10(col: Column) -> Column:
    """`e11.900`, `E119`, ` E11.9 ` -> `E11.9`: upper case, the dot after three characters, one decimal.

    National extension digits (E11.900 of the Chinese clinical edition) are dropped to the WHO
    four-character code, and its placeholder for "no subcategory" with them (I10.x00 -> I10); the
    source code is kept beside it in silver.
    """
    compact = F.regexp_replace(F.upper(clean_text(col)), r"[^A-Z0-9]", "")
    head, tail = F.substring(compact, 1, 3), F.substring(compact, 4, 1)
    return F.when(compact.rlike(r"^[A-Z][0-9]{2}[0-9A-Z]*$"),
                  F.when(tail.isin("", "X"), head).otherwise(F.concat(head, F.lit("."), tail)))


def normalize_icd9cm3(col: Column) -> Column:
    """`3606`, ` 36.06 `, `36.6` -> `36.06` / `36.6`: two digits, a dot, then the rest (one or two digits)."""
    compact = F.regexp_replace(clean_text(col), r"[^0-9]", "")
    return F.when(clean_text(col).rlike(r"^[0-9]{2}\.?[0-9]{1,2}$"),
                  F.concat(F.substring(compact, 1, 2), F.lit("."), F.substring(compact, 3, 2)))


def is_cancelled(status: Column, hospital: Column, cancelled: dict[str, list[str]]) -> Column:
    """Whether a record's status is one of its hospital's cancellation values (conf/vocab/status.csv)."""
    value = clean_text(status)
    expr = F.lit(False)
    for hospital_id, values in sorted(cancelled.items()):
        expr = F.when(hospital == hospital_id, F.coalesce(value.isin(*values), F.lit(False))).otherwise(expr)
    return expr


# direct identifiers that free text (notes, imaging reports) carries, found by pattern and context
# 18 characters with a birth year in the date block: a mistyped day or check character is still an identifier
ID_NUMBER = r"(?<![0-9A-Za-z])[1-9][0-9]{5}(?:18|19|20)[0-9]{9}[0-9Xx](?![0-9A-Za-z])"
PHONE = r"(?<![0-9A-Za-z])(?:\+?86[- ]?)?1[3-9][0-9][- ]?[0-9]{4}[- ]?[0-9]{4}(?![0-9A-Za-z])"
LANDLINE = r"(?<![0-9A-Za-z])0[1-9][0-9]{1,2}-[2-9][0-9]{6,7}(?![0-9A-Za-z])"
MRN_LABEL = r"(?:病案号|住院号|门诊号|病历号|MRN)[:：]?\s*"
LABELLED_MRN = f"({MRN_LABEL})[A-Za-z0-9-]+"
PLACE = r"[^\P{IsHan}住居家现于在址到从往]\p{IsHan}{0,7}?"  # a place name does not start with 住 (lives at)
ADDRESS = f"(?:{PLACE}(?:省|市|自治区))?(?:{PLACE}(?:市|区|县))?{PLACE}(?:路|街|道|巷|弄|胡同)" \
          r"[0-9０-９]+(?:号|弄)(?:[0-9]+(?:栋|幢|单元|室|楼))*"
# a name is said after a cue (患者, 家属, ...) and ends at punctuation or a following verb; Latin names too
NAME_CUES = "患者|病人|姓名|家属|联系人|配偶|母亲|父亲|丈夫|妻子|儿子|女儿|之子|之女|患儿|签名|医师|护士"
NAME_END = r"(?=[，,。；;、:：\s（）()]|陪同|因|于|诉|主诉|入院|出院|$)"


def name_pattern(surnames: list[str]) -> str:
    """A Chinese name (a known surname and one or two characters) or a Latin one, right after a cue."""
    cue = f"(?<=(?:{NAME_CUES})[:：]?\\s?)"
    han = f"(?:{'|'.join(surnames)})\\p{{IsHan}}{{1,2}}?{NAME_END}"
    latin = r"[A-Z][A-Za-z]+(?: [A-Z][A-Za-z]+){1,2}(?![A-Za-z])"
    return f"{cue}(?:{han}|{latin})"


def scrub_rules(surnames: list[str]) -> list[tuple[str, str, str]]:
    """(kind, Java regex, replacement) in the order they apply; rules are data, so the scrubber and its
    measurement (`scrub_spans`) use the same list."""
    return [("national_id", ID_NUMBER, "[身份证号]"), ("phone", PHONE, "[电话]"), ("phone", LANDLINE, "[电话]"),
            ("mrn", LABELLED_MRN, "$1[病案号]"), ("address", ADDRESS, "[地址]"),
            ("name", name_pattern(surnames), "[姓名]")]


def mask_identifiers(text: Column, surnames: list[str]) -> Column:
    """Names, ID numbers, phones, addresses and labelled MRNs in free text replaced by a tag."""
    return reduce(lambda masked, rule: F.regexp_replace(masked, rule[1], rule[2]), scrub_rules(surnames), text)


def _tagged(kind: str):
    """element -> (kind, span); a one-argument function, as F.transform passes an index to two-argument ones."""
    return lambda span: F.struct(F.lit(kind).alias("kind"), span.alias("span"))


def scrub_spans(text: Column, surnames: list[str]) -> Column:
    """What the scrubber removes, as an array of (kind, span), each rule applied after the previous ones."""
    spans, masked = [], text
    for kind, pattern, replacement in scrub_rules(surnames):
        found = F.regexp_extract_all(masked, F.lit(pattern), 0)
        if kind == "mrn":
            found = F.transform(found, lambda s: F.regexp_replace(s, f"^{MRN_LABEL}", ""))
        spans.append(F.transform(found, _tagged(kind)))
        masked = F.regexp_replace(masked, pattern, replacement)
    return F.flatten(F.array(*spans))
