"""The gold stage: silver -> patient timeline -> each task's feature table."""

from __future__ import annotations

from pyspark.sql import SparkSession

from lakehouse import io
from lakehouse.catalog import DIAGNOSIS, ENCOUNTER, LAB_RESULT, PERSON, TIMELINE, features_table
from lakehouse.config import Settings
from lakehouse.gold.features import build_features
from lakehouse.gold.timeline import build_timeline
from lakehouse.io import Written

INPUTS = (PERSON, ENCOUNTER, DIAGNOSIS, LAB_RESULT)


def build_inputs(spark: SparkSession, settings: Settings) -> list[Written]:
    return [io.describe(spark, ref, settings.root) for ref in INPUTS]


def outputs(settings: Settings) -> list:
    return [TIMELINE] + [features_table(t.name, t.features) for t in settings.tasks.values()]


def build(spark: SparkSession, settings: Settings) -> list[Written]:
    root = settings.root
    encounters = io.read(spark, ENCOUNTER, root)
    timeline = build_timeline(encounters, io.read(spark, DIAGNOSIS, root), io.read(spark, LAB_RESULT, root))
    written = [io.overwrite(spark, timeline, TIMELINE, root)]
    timeline_version = written[0].version
    for task in settings.tasks.values():
        features = build_features(encounters, io.read(spark, PERSON, root),
                                  io.read(spark, TIMELINE, root, version=timeline_version), task, timeline_version)
        written.append(io.overwrite(spark, features, features_table(task.name, task.features), root))
    return written
