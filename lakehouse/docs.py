"""The reference pages of docs/, written from the code and the configuration they describe.

    python -m lakehouse.docs            # rewrite docs/tables.md, data-quality.md, vocabularies.md, tasks.md
    python -m lakehouse.docs --check    # exit 1 if a page is not what the code and conf/ say (a test runs this)

Tables come from lakehouse/catalog.py, rules from conf/dq, vocabularies from conf/vocab, tasks from
conf/tasks and conf/features.yaml: a page can never describe a schema or a rule that is not the one the
jobs use. docs/privacy.md is written by hand.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Callable
from pathlib import Path

from lakehouse import catalog
from lakehouse.catalog import TableRef
from lakehouse.config import LEARNER_PARAMETERS, Settings, load_settings
from lakehouse.ml.model_card import describe_index, describe_outcome, markdown_table

PROJECT = Path(__file__).resolve().parents[1]
DOCS = PROJECT / "docs"
GENERATED = "<!-- written by `python -m lakehouse.docs` from {source}: edit that, not this page -->"

VOCABULARY_USE = {
    "drug_codes.csv": "hospital drug codes to ATC (silver.medication.atc_code)",
    "encounter_types.csv": "hospital encounter type values to inpatient, outpatient, emergency",
    "icd10.csv": "ICD-10 codes the region uses, with their names (diagnoses are normalised to these)",
    "icd9cm3.csv": "ICD-9-CM-3 procedure codes, with their names",
    "lab_codes.csv": "hospital lab test codes to LOINC (silver.lab_result.loinc_code)",
    "pinyin.csv": "toneless pinyin of the 6,763 GB2312 characters, with surname readings (person linkage)",
    "sex.csv": "hospital sex values to M, F, U",
    "status.csv": "hospital record status values (active, cancelled, ...)",
    "surnames.csv": "surnames the free-text scrubber recognises after a cue word",
    "units.csv": "per LOINC code: each source unit, the canonical unit and the conversion factor",
    "vital_codes.csv": "nursing measurement codes to LOINC (silver.vital_sign.loinc_code)",
}


def catalog_tables() -> list[TableRef]:
    """Every TableRef lakehouse/catalog.py defines (alone or in a dict, list or tuple), in definition order."""
    found: dict[str, TableRef] = {}
    for value in vars(catalog).values():
        items = value.values() if isinstance(value, dict) else value if isinstance(value, list | tuple) else [value]
        found.update((ref.qualified, ref) for ref in items if isinstance(ref, TableRef) and ref.qualified not in found)
    return list(found.values())


def _vocabulary_use(file: str) -> str:
    if file not in VOCABULARY_USE:
        raise KeyError(f"conf/vocab/{file} is not described: add it to VOCABULARY_USE in lakehouse/docs.py")
    return VOCABULARY_USE[file]


def _describe(ref: TableRef, column_docs: dict[str, str]) -> list[str]:
    lines = [f"### `{ref.qualified}`", "", ref.description or "", ""]
    if ref.keys:
        lines += [f"Key: {', '.join(f'`{k}`' for k in ref.keys)}", ""]
    lines += markdown_table(["column", "type", "meaning"],
                            [[f"`{name}`", f"`{kind}`", column_docs.get(name, "")] for name, kind in ref.fields])
    return [*lines, ""]


def tables_page(settings: Settings) -> str:
    bronze = catalog.BRONZE["patient"]
    lines = [GENERATED.format(source="lakehouse/catalog.py"), "", "# Tables and their schemas", "",
             "Every table is a Delta table at `<root>/<layer>/<table>`, registered in a Spark session as "
             "`<layer>.<table>`. Names, locations and schemas are defined in `lakehouse/catalog.py` only.", "",
             "## Bronze", "",
             f"One table per entity ({', '.join(f'`{e}`' for e in catalog.ENTITIES)}): every source value as "
             "received (strings, named by the source contract's mapping), plus lineage. Append-only.", ""]
    for entity in catalog.ENTITIES:
        lines.append(f"- `bronze.{entity}`: " + ", ".join(f"`{c}`" for c in catalog.BRONZE_COLUMNS[entity]))
    lines += ["", "Lineage columns of every bronze table:", "",
              *markdown_table(["column", "type"],
                              [[f"`{n}`", f"`{t}`"] for n, t in bronze.fields if n.startswith("_")]), ""]
    lines += ["## Silver", ""]
    tables = catalog_tables()
    named = list(catalog.SILVER.values())
    for ref in [*named, *(t for t in tables if t.layer == "silver" and t not in named)]:
        lines += _describe(ref, catalog.SILVER_COLUMN_DOCS)
    lines += ["## Gold", ""]
    for ref in (t for t in tables if t.layer == "gold"):
        lines += _describe(ref, {})
    lines += ["Per cohort of `conf/cohorts` (here with the name `<name>`):", "",
              *_describe(catalog.cohort_table("<name>"), {})]
    lines += ["Per task of `conf/tasks` (features listed in [tasks.md](tasks.md)):", "",
              *_describe(catalog.features_table("<task>", ["<feature>"]), {}),
              *_describe(catalog.predictions_table("<task>"), {})]
    lines += ["## Operations", ""]
    for ref in (t for t in tables if t.layer == "ops"):
        lines += _describe(ref, {})
    lines += ["## Vault", "", "Readable by the identity role only; see [privacy.md](privacy.md).", ""]
    for ref in (t for t in tables if t.layer == "vault"):
        lines += _describe(ref, {})
    return "\n".join(lines).rstrip() + "\n"


def quality_page(settings: Settings) -> str:
    lines = [GENERATED.format(source="conf/dq/*.yaml"), "", "# Data-quality rules", "",
             "Each refine evaluates these on the rows it merges into silver and writes one row per rule and "
             "hospital to `ops.dq_result` (`lakehouse dq-report` renders them). A row rule's `action` says what "
             "happens to a failing row: `warn` keeps it with the rule's name in `dq_flags`, `quarantine` moves it "
             "to `ops.quarantine` with the rule as its reason, `fail` stops the refine. A rule's status is `fail` "
             "when its pass rate is below its threshold. Categories follow Kahn et al. (2016): conformance, "
             "completeness, plausibility.", "",
             "Table checks run on the merged table: `completeness` (no missing value), `uniqueness` (one row per "
             "value), `referential` (the value exists in another silver table), `after_birth` (the row's time is "
             "not in a year before its patient's birth year: silver holds the year only) and `before_death` (the "
             "row's time is not after its patient's death, the end of a stay of the same hospital record that "
             "ended in death). Results, notes, diagnoses and reports may follow a death, so only stays, vital "
             "signs, procedures and medication orders are held to `before_death`.", ""]
    for name, table in sorted(settings.dq.items()):
        lines += [f"## silver.{name}", ""]
        if table.rules:
            lines += [*markdown_table(["rule", "what it checks", "category", "severity", "action", "threshold",
                                       "expression (Spark SQL, true for a good row)"],
                                      [[f"`{r.name}`", r.description, r.category, r.severity, r.action, r.threshold,
                                        f"`{' '.join(r.expression.split())}`"] for r in table.rules]), ""]
        if table.checks:
            lines += [*markdown_table(["table check", "what it checks", "kind", "columns", "references", "category",
                                       "severity", "threshold"],
                                      [[f"`{c.name}`", c.description, c.kind, ", ".join(c.columns),
                                        c.references or "", c.category, c.severity, c.threshold]
                                       for c in table.checks]), ""]
    return "\n".join(lines).rstrip() + "\n"


def vocabularies_page(settings: Settings) -> str:
    folder = settings.vocab_dir
    version = (folder / "VERSION").read_text(encoding="utf-8").strip()
    rows = []
    for file in sorted(folder.glob("*.csv")):
        with file.open(encoding="utf-8", newline="") as handle:
            reader = csv.reader(handle)
            header = next(reader)
            count = sum(1 for _ in reader)
        rows.append([f"`{file.name}`", _vocabulary_use(file.name), ", ".join(f"`{h}`" for h in header), count])
    lines = [GENERATED.format(source="conf/vocab"), "", "# Vocabularies", "",
             f"Version **{version}** (`conf/vocab/VERSION`). Mappings are data: a hospital's new local code is a "
             "new line in a CSV file, not code. Every coded silver row records the `vocab_version` that mapped "
             "it. When a code mapping (`lab_codes`, `vital_codes`, `drug_codes`, `units`, `icd10`, `icd9cm3`) "
             "changes, the next `lakehouse refine` re-maps only the silver rows holding a code whose entry was "
             "added, removed or changed (against the mappings it recorded in `ops.refine_vocab`); a change of "
             "`sex`, `status` or `encounter_types` re-maps every row (a full pass). Both are recorded in the "
             "tables' Delta history (`vocab <version>`, `re-map of <tables>`). `lakehouse vocab-coverage` shows the "
             "share of codes mapped per hospital and entity and the most frequent unmapped codes.", "",
             *markdown_table(["file", "what it maps", "columns", "rows"], rows)]
    return "\n".join(lines).rstrip() + "\n"


def tasks_page(settings: Settings) -> str:
    catalog_ = settings.features
    lines = [GENERATED.format(source="conf/tasks/*.yaml and conf/features.yaml"), "", "# Prediction tasks", "",
             "A task is a YAML file under `conf/tasks`: who is eligible, the index event, the outcome, the "
             "look-back windows and feature sets, the models (logistic regression first: the baseline), the "
             "validation and the promotion rule. `lakehouse build` writes `gold.features_<task>`, `lakehouse "
             "train` validates and registers `models:/<model_name>`, `lakehouse score` writes "
             "`gold.predictions_<task>`.", ""]
    for name, task in sorted(settings.tasks.items()):
        windows = ", ".join(f"`{w.name}` ({w.hours} h before the index" +
                            (f", ending {-w.end_hours} h before it)" if w.end_hours else ")") for w in task.lookback)
        models = "; ".join(f"{m.type} ({', '.join(f'{k}={getattr(m, k)}' for k in LEARNER_PARAMETERS[m.type])})"
                           for m in task.models)
        age = task.eligibility.age
        bounds = [] if age is None else [f"{word} {bound:g}" for word, bound in (("aged at least", age.min),
                                                                                   ("at most", age.max)) if bound]
        ages = " and ".join(bounds) or "any age"
        rows = [["description", task.description], ["registered model", f"`{task.model_name}`"],
                ["eligible", ages + (f", in cohort `{task.eligibility.cohort}`" if task.eligibility.cohort else "")],
                ["index", describe_index(task)], ["outcome", describe_outcome(task)],
                ["exclusions", ", ".join(task.exclusions) or "none"],
                ["look-back windows", windows], ["feature sets", ", ".join(task.feature_sets)],
                ["features", f"{len(task.features)} (e.g. {', '.join(f'`{f}`' for f in task.features[:4])})"],
                ["models", models], ["validation", task.validation],
                ["promotion", f"pooled external AUROC above the champion's + {task.promotion.margin}, ECE at most "
                              f"the champion's + {task.promotion.max_ece_increase}"]]
        lines += [f"## {name}", "", *markdown_table(["", ""], rows), ""]
    labs = ", ".join(f"`{n}` ({c})" for n, c in catalog_.labs.codes.items())
    vitals = ", ".join(f"`{n}` ({c})" for n, c in catalog_.vitals.codes.items())
    lines += ["## Feature sets (`conf/features.yaml`)", "",
              f"- labs: {labs}; per window: {', '.join(catalog_.labs.stats)}",
              f"- vitals: {vitals}; per window: {', '.join(catalog_.vitals.stats)}",
              "- comorbidities (ICD-10 prefixes): " + "; ".join(f"`{n}` {', '.join(p)}"
                                                                for n, p in catalog_.comorbidities.items()),
              "- utilisation (counts of codes): " + "; ".join(f"`{n}` {', '.join(c)}"
                                                             for n, c in catalog_.utilisation.items()),
              f"- ages above {catalog_.max_age} are top-coded", "",
              "Every feature is computed from timeline events strictly before the index time (a window may end "
              "earlier, never later); the leakage property is a test (tests/test_ml.py)."]
    return "\n".join(lines).rstrip() + "\n"


PAGES: dict[str, Callable[[Settings], str]] = {
    "tables.md": tables_page, "data-quality.md": quality_page, "vocabularies.md": vocabularies_page,
    "tasks.md": tasks_page,
}


def stale(settings: Settings, docs: Path = DOCS) -> list[str]:
    """Pages whose text is not what the code and configuration say now."""
    return [name for name, page in PAGES.items()
            if not (docs / name).exists() or (docs / name).read_text(encoding="utf-8") != page(settings)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lakehouse.docs", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a page is stale; write nothing")
    parser.add_argument("--conf-dir", default=str(PROJECT / "conf"))
    args = parser.parse_args(argv)
    settings = load_settings(args.conf_dir, "local")
    if args.check:
        old = stale(settings)
        for name in old:
            print(f"stale: docs/{name} (run `python -m lakehouse.docs`)")
        return 1 if old else 0
    DOCS.mkdir(exist_ok=True)
    for name, page in PAGES.items():
        (DOCS / name).write_text(page(settings), encoding="utf-8")
        print(f"wrote docs/{name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
