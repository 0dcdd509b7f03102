"""Readers: one group of a hospital's files -> records, each with its file, line, entity and error.

`parse` returns one row per source record (CSV line, JSON line, HL7 repeating segment such as OBX)
with `_source_file`, `_source_line`, `_entity` (where it is routed), `_error` (null for a good record,
else why it goes to quarantine), `_raw` (the record's text, kept for quarantined records only) and
the payload `project` reads the bronze columns from. Everything runs on the executors with Spark
built-ins; the driver only reads the first line of each CSV file (its header).

Line numbers: `number` gives each record `monotonically_increasing_id()`, which counts up inside a
partition; the rows of one file split are contiguous, so a small aggregate per (file, split) turns
the id into the record's ordinal in its file (no shuffle of the rows themselves). The ingest job
numbers all files of an entity at once; a reader numbers its records itself only where it must
(HL7 counts segments per message; a FHIR file routed to several entities). Spark's CSV reader skips
blank lines unseen: `blank_line_skips` finds them in one text pass and `skip_blank_lines` moves the
numbers past them.
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from lakehouse import io
from lakehouse.bronze import hl7
from lakehouse.config import EntitySource

BOM = "\ufeff"
REPLACEMENT = "\ufffd"
CORRUPT = "_corrupt"


class FileProblem(Exception):
    """A whole file cannot be read with its contract (its reason goes to the ledger)."""


def parse(spark: SparkSession, fmt: str, sources: dict[str, EntitySource], paths: list[str]) -> DataFrame:
    """Records with `_source_file`, `_block`, `_line_offset` (line of ordinal 1), `_source_line` (null until
    numbered), `_drop` (a blank line: numbered, then dropped), `_entity`, `_error`, `_raw` and the payload."""
    return PARSERS[fmt](spark, sources, paths)


def project(records: DataFrame, fmt: str, source: EntitySource) -> tuple[list[Column], Column]:
    """The bronze columns (strings, named as bronze names them) and the `_extra` map of one entity."""
    return PROJECTORS[fmt](records, source)


# --- numbering ---------------------------------------------------------------------------------

def _scan(frame: DataFrame) -> DataFrame:
    """Rows straight from a file scan, with their file, split and `_id`. The id is taken here, on the scan,
    not after a union: a union's partition numbers depend on its other inputs, which may differ between
    two evaluations (adaptive execution coalesces shuffles by size), a scan's do not."""
    return frame.select("*", F.col("_metadata.file_path").alias("_source_file"),
                        F.col("_metadata.file_block_start").alias("_block"),
                        F.monotonically_increasing_id().alias("_id"))


def splits(frame: DataFrame) -> DataFrame:
    """One row per (file, split): the split's first `_id` and its number of records, `_n`."""
    return frame.groupBy("_source_file", "_block").agg(F.min("_id").alias("_first_id"), F.count("*").alias("_n"))


def number(frame: DataFrame, counted: DataFrame | None = None) -> DataFrame:
    """Fill `_source_line` where it is null: the record's ordinal in its file, from `_line_offset` on.

    Must run on rows straight from the file scans (unions of them are fine): no row may be filtered out
    before, or the ordinals after it would shift. `counted` is `splits(frame)` when the caller has it
    already (computed from a cached frame, it saves a pass over the files).
    """
    counted = splits(frame) if counted is None else counted
    before = Window.partitionBy("_source_file").orderBy("_block").rowsBetween(Window.unboundedPreceding, -1)
    offsets = counted.select("_source_file", "_block", "_first_id",
                             F.coalesce(F.sum("_n").over(before), F.lit(0)).alias("_before"))
    ordinal = F.col("_id") - F.col("_first_id") + F.col("_before") + F.col("_line_offset")
    return (frame.join(F.broadcast(offsets), ["_source_file", "_block"])
            .withColumn("_source_line", F.coalesce(F.col("_source_line"), ordinal.cast("bigint")))
            .drop("_first_id", "_before"))


BLANK_LINE = "^[\\x00-\\x20]*$"  # what Spark's CSV reader skips unseen (Java's String.trim() leaves nothing)


def blank_line_skips(spark: SparkSession, paths: list[str]) -> dict[str, list[int]]:
    """Per CSV file with blank lines, `b_j - j` for its j-th blank line b_j (1-based, sorted): the number of
    lines before it that Spark's CSV reader returns or reads as the header. Spark drops blank lines before
    numbering can see them, so a record numbered n by its ordinal is really on line n + #{j: b_j - j < n}.

    One pass over the files as text (line breaks are the same bytes in every supported encoding, and no byte of
    a GB18030 character is a space or control); what reaches the driver is a row per file split and the blank
    lines' ids, not the lines."""
    scan = _scan(spark.read.text(paths))
    per_split = (scan.groupBy("_source_file", "_block")
                 .agg(F.min("_id").alias("first"), F.count(F.lit(1)).alias("n"),
                      F.collect_list(F.when(F.col("value").rlike(BLANK_LINE), F.col("_id"))).alias("blank"))
                 .collect())
    skips: dict[str, list[int]] = {}
    before: dict[str, int] = {}
    for split in sorted(per_split, key=lambda r: (r._source_file, r._block)):
        offset = before.get(split._source_file, 0)
        if split.blank:
            skips.setdefault(split._source_file, []).extend(i - split.first + offset + 1 for i in sorted(split.blank))
        before[split._source_file] = offset + split.n
    return {file: [line - j for j, line in enumerate(lines, start=1)] for file, lines in skips.items()}


def skip_blank_lines(spark: SparkSession, frame: DataFrame, skips: dict[str, list[int]]) -> DataFrame:
    """`frame`'s `_source_line` moved past the blank lines Spark's CSV reader skipped (see blank_line_skips)."""
    if not skips:
        return frame
    table = spark.createDataFrame(sorted(skips.items()), "_source_file STRING, _skips ARRAY<BIGINT>")
    passed = F.array_size(F.filter("_skips", lambda before: before < F.col("_source_line")))
    return (frame.join(F.broadcast(table), "_source_file", "left")
            .withColumn("_source_line", F.col("_source_line") + F.coalesce(passed, F.lit(0))).drop("_skips"))


def _lines(offset: int, drop: Column | None = None) -> list[Column]:
    return [F.lit(offset).alias("_line_offset"), F.lit(None).cast("bigint").alias("_source_line"),
            (drop if drop is not None else F.lit(False)).alias("_drop")]


def _too_long(source: EntitySource) -> Column:
    return F.lit(f"record longer than {source.max_record_bytes} bytes (max_record_bytes in the contract)")


# --- CSV / TSV -----------------------------------------------------------------------------------

def _csv_reader(spark: SparkSession, source: EntitySource):
    return (spark.read.option("header", str(source.header).lower()).option("sep", source.delimiter)
            .option("encoding", source.encoding).option("mode", "PERMISSIVE")
            .option("columnNameOfCorruptRecord", CORRUPT)
            .option("enforceSchema", "false"))  # a file whose header differs fails, and is then read on its own


def first_line(spark: SparkSession, path: str, encoding: str, size: int = 65536) -> str:
    """The first line of a file (decompressed by its suffix, as Spark would), read on the driver: at most
    `size` bytes of one file, not a Spark job."""
    head = io.read_bytes(spark, path, size, decompress=True)
    text = head.decode(encoding, errors="replace").lstrip(BOM)  # Spark's CSV reader drops a byte order mark too
    return text.splitlines()[0] if text else ""


def parse_csv(spark: SparkSession, sources: dict[str, EntitySource], paths: list[str]) -> DataFrame:
    (entity, source), = sources.items()
    fields = first_line(spark, paths[0], source.encoding).split(source.delimiter)
    names = fields if source.header else [f"_c{i}" for i in range(len(fields))]
    missing = sorted(set(source.sent().values()) - set(names))
    if missing:
        raise FileProblem(f"the header line lacks the contract's columns {missing} "
                          "(another export, delimiter or encoding?)")
    schema = T.StructType([T.StructField(c, T.StringType()) for c in names]
                          + [T.StructField(CORRUPT, T.StringType())])
    raw = _scan(_csv_reader(spark, source).schema(schema).csv(paths))
    text = F.coalesce(F.col(CORRUPT), F.concat_ws(source.delimiter, *[F.col(f"`{c}`") for c in names]))
    delimiter = "\\" + source.delimiter if not source.delimiter.isalnum() else source.delimiter
    quotes = F.length(CORRUPT) - F.length(F.replace(CORRUPT, F.lit('"')))
    error = (F.when(F.octet_length("_text") > source.max_record_bytes, _too_long(source))
             .when(F.col(CORRUPT).isNotNull() & (quotes % 2 == 1),
                   F.lit("malformed line: a quote that is never closed"))
             .when(F.col(CORRUPT).isNotNull(),
                   F.concat(F.lit("malformed line: "), F.size(F.split(F.col(CORRUPT), delimiter, -1)).cast("string"),
                             F.lit(f" fields where the header has {len(names)}")))
             .when(F.col("_text").contains(REPLACEMENT),
                   F.lit(f"wrong encoding: bytes that are not {source.encoding}")))
    if source.encoding.replace("-", "").upper() not in ("UTF8", "USASCII", "ASCII"):
        # a line sent as UTF-8 in a GB18030 (or other) file decodes without error into other characters
        as_utf8 = F.is_valid_utf8(F.encode(F.col("_text"), source.encoding).cast("string"))
        error = error.when(F.col("_text").rlike("[^\\x00-\\x7F]") & as_utf8,
                           F.lit(f"wrong encoding: a UTF-8 line in a {source.encoding} file"))
    # the line's text is rebuilt for the checks, but kept only for the records that go to quarantine
    checked = raw.withColumn("_text", text).withColumn("_error", error.otherwise(None))
    return checked.select(*[F.col(f"`{c}`") for c in names], "_source_file", "_block", "_id",
                          *_lines(2 if source.header else 1), F.lit(entity).alias("_entity"), "_error",
                          F.when(F.col("_error").isNotNull(), F.col("_text")).alias("_raw"))


def project_csv(records: DataFrame, source: EntitySource) -> tuple[list[Column], Column]:
    mapped = set(source.sent().values())
    unmapped = [c for c in records.columns if c not in mapped and not c.startswith("_")]
    extra = (F.map_from_arrays(F.array(*[F.lit(c) for c in unmapped]), F.array(*[F.col(f"`{c}`") for c in unmapped]))
             if unmapped else F.create_map().cast("map<string,string>"))
    return _columns(source, lambda vendor: F.col(f"`{vendor}`")), extra


def _columns(source: EntitySource, read) -> list[Column]:
    """Every bronze column of the entity, read where the contract says; null where it says "" (not sent)."""
    sent = source.sent()
    return [(read(sent[bronze]) if bronze in sent else F.lit(None).cast("string")).alias(bronze)
            for bronze in source.columns]


# --- JSON lines and FHIR R4 NDJSON ----------------------------------------------------------------

def json_path(path: str) -> list[tuple[str, int | None]]:
    """`$.code.coding[0].code` -> [("code", None), ("coding", 0), ("code", None)]."""
    steps = []
    for part in path[2:].split("."):
        name, *indexes = part.replace("]", "").split("[")
        if len(indexes) > 1:
            raise ValueError(f"nested arrays are not supported: {path}")
        steps.append((name, int(indexes[0]) if indexes else None))
    return steps


def json_schema(paths: list[str]) -> T.StructType:
    """The smallest schema that holds every path, leaves as strings (a number or an object is kept as its
    JSON text), so each line is parsed once by `from_json` instead of once per column."""
    tree: dict = {}
    for path in paths:
        node = tree
        for i, (name, index) in enumerate(json_path(path)):
            leaf = i == len(json_path(path)) - 1
            kind, children = node.get(name, (None, {}))
            kind = "array" if index is not None else (kind or "value")
            node[name] = (kind, children)
            if not leaf:
                node = children

    def build(node: dict) -> T.StructType:
        fields = []
        for name, (kind, children) in sorted(node.items()):
            inner = build(children) if children else T.StringType()
            fields.append(T.StructField(name, T.ArrayType(inner) if kind == "array" else inner))
        return T.StructType(fields)

    return T.StructType([*build(tree).fields, T.StructField(CORRUPT, T.StringType())])


def json_value(parsed: Column, path: str) -> Column:
    """The value at `path` in a `from_json` struct; null when absent."""
    value = parsed
    for name, index in json_path(path):
        value = value.getField(name)
        if index is not None:
            value = F.get(value, index)
    return value


def _json_paths(sources: dict[str, EntitySource]) -> list[str]:
    paths = {"$.resourceType"}
    for source in sources.values():
        paths |= set(source.sent().values()) | set(source.match)
    return sorted(paths)


def parse_json(spark: SparkSession, sources: dict[str, EntitySource], paths: list[str]) -> DataFrame:
    """One record per non-blank line, parsed once; each routed to the entity whose resourceType and `match`
    it has."""
    raw = _scan(spark.read.text(paths)).select("*", *_lines(1, F.trim("value") == ""))
    if len(sources) > 1:  # records are routed apart below: number them while they are still all there
        raw = number(raw)
    schema = json_schema(_json_paths(sources))
    options = {"mode": "PERMISSIVE", "columnNameOfCorruptRecord": CORRUPT}
    parsed = raw.withColumn("_json", F.from_json("value", schema, options))
    record = F.col("_json")
    resource_type = json_value(record, "$.resourceType")
    route = None
    for entity, source in sorted(sources.items()):
        condition = resource_type == source.resource_type if source.resource_type else F.lit(True)
        for path, expected in source.match.items():
            condition = condition & (json_value(record, path) == expected)
        route = F.when(condition, F.lit(entity)) if route is None else route.when(condition, F.lit(entity))
    expected_types = sorted({s.resource_type for s in sources.values() if s.resource_type})
    longest = max(s.max_record_bytes for s in sources.values())
    error = (F.when(F.octet_length("value") > longest, _too_long(max(sources.values(),
                                                                    key=lambda s: s.max_record_bytes)))
             .when(record.isNull() | record.getField(CORRUPT).isNotNull(), F.lit("invalid JSON"))
             .when(F.col("_entity").isNull(),
                   F.concat(F.lit("not routed: resourceType "), F.coalesce(resource_type, F.lit("(none)")),
                            F.lit(f" does not match the contract's entities for this file ({expected_types})"
                                  if expected_types else " does not match any entity for this file"))))
    for entity, source in sorted(sources.items()):
        for column in source.required:
            path = source.columns[column]
            error = error.when((F.col("_entity") == entity) & json_value(record, path).isNull(),
                               F.lit(f"required {column} absent ({path})"))
    return (parsed.withColumn("_entity", route)
            .select("value", "_json", "_source_file", "_block", "_id", "_line_offset", "_source_line", "_drop",
                    "_entity", error.alias("_error"), F.when(error.isNotNull(), F.col("value")).alias("_raw")))


def project_json(records: DataFrame, source: EntitySource) -> tuple[list[Column], Column]:
    columns = _columns(source, lambda path: json_value(F.col("_json"), path))
    return columns, F.create_map(F.lit("_record"), F.col("value"))  # the whole record is kept as received


# --- HL7 v2 --------------------------------------------------------------------------------------

def parse_hl7(spark: SparkSession, sources: dict[str, EntitySource], paths: list[str]) -> DataFrame:
    """One record per occurrence of the entity's segment (OBX), with its message's other segments.

    Files are read with "MSH|" as the record separator, so a message is never cut apart; the text
    before a file's first MSH is a record too (empty in a well-formed file).
    """
    (entity, source), = sources.items()
    row_segment = source.segment
    raw = number(_scan(spark.read.option("lineSep", "MSH|").text(paths)).select("*", *_lines(1)))
    first = F.col("_source_line") == 1  # the message ordinal, until the segment lines are counted below
    messages = (raw.withColumn("_message", F.when(first, F.col("value")).otherwise(F.concat(F.lit("MSH|"), "value")))
                .withColumn("_segments", hl7.segments("_message"))
                .withColumn("_lines", F.when(F.col("_message") == "", 0).otherwise(F.size("_segments"))))
    in_file = Window.partitionBy("_source_file").orderBy("_source_line").rowsBetween(Window.unboundedPreceding, -1)
    # a batch file's FHS/BHS header (or nothing) comes before the first MSH: not a record, but its lines count
    messages = (messages.withColumn("_first_line", F.coalesce(F.sum("_lines").over(in_file), F.lit(0)) + 1)
                .where(~(first & ((F.trim("_message") == "") | F.col("_message").rlike("^(FHS|BHS)\\|")))))
    index = F.sequence(F.lit(0), F.col("_lines") - 1)
    rows = _positions(index, row_segment)
    exploded = messages.select("*", F.explode(F.when(first, F.array(F.lit(-1)))
                                              .when(F.size(rows) == 0, F.array(F.lit(-2)))
                                              .otherwise(rows)).alias("_pos"))
    segment = F.get(F.col("_segments"), F.col("_pos"))
    context = {name: _context(index, name) for name in sorted(_context_segments(source) - {row_segment})}
    payload = exploded.select("_source_file", "_block", F.lit(None).cast("bigint").alias("_id"), "_pos", "_message",
                              "_first_line",
                              segment.alias(row_segment),
                              *[c.alias(n) for n, c in context.items()])
    error = (F.when(F.octet_length("_message") > source.max_record_bytes, _too_long(source))
             .when(F.col("_pos") == -1, F.lit("text before the first MSH segment"))
             .when(F.col("_pos") == -2, F.lit(f"message without any {row_segment} segment")))
    for column in source.required:
        reference = source.columns[column]
        error = error.when(hl7.field(F.col(reference.split("-")[0]), reference).isNull(),
                           F.lit(f"malformed {reference.split('-')[0]} segment: {reference} ({column}) absent"))
    return payload.select(
        "*", F.lit(1).alias("_line_offset"),
        (F.col("_first_line") + F.greatest(F.col("_pos"), F.lit(0))).cast("bigint").alias("_source_line"),
        F.lit(False).alias("_drop"), F.lit(entity).alias("_entity"), error.alias("_error"),
        F.when(error.isNull(), None).when(F.col("_pos") >= 0, F.col(row_segment)).otherwise(F.col("_message"))
        .alias("_raw"),
    ).drop("_message", "_first_line", "_pos")


HL7_CONTEXT = frozenset({"MSH", "PID", "PV1", "OBR"})  # kept with every row, mapped or not


def _context_segments(source: EntitySource) -> set[str]:
    return set(HL7_CONTEXT) | {hl7.parse_reference(ref)[0] for ref in source.sent().values()}


def _positions(index: Column, name: str) -> Column:
    """Positions of the message's segments called `name`."""
    return F.filter(index, lambda i: F.startswith(F.get(F.col("_segments"), i), F.lit(name + "|")))


def _context(index: Column, name: str) -> Column:
    """The segment `name` that governs the row segment: the last one before it, else the message's first."""
    at = _positions(index, name)
    chosen = F.coalesce(F.array_max(F.filter(at, lambda i: i < F.col("_pos"))), F.array_min(at))
    return F.get(F.col("_segments"), chosen)


def project_hl7(records: DataFrame, source: EntitySource) -> tuple[list[Column], Column]:
    kept = sorted(_context_segments(source) | {source.segment})
    extra = F.create_map(*[part for name in kept for part in (F.lit(name), F.col(name))])
    # the segments the row was read from are kept whole
    return _columns(source, lambda ref: hl7.field(F.col(ref.split("-")[0]), ref)), extra


PARSERS = {"csv": parse_csv, "jsonl": parse_json, "fhir_ndjson": parse_json, "hl7v2": parse_hl7}
PROJECTORS = {"csv": project_csv, "jsonl": project_json, "fhir_ndjson": project_json, "hl7v2": project_hl7}
