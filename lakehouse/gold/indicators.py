"""Operational indicators per hospital, department and day, and registry sizes (definitions: README, Gold).

Everything is counted as of the as-of day: a stay admitted on or after it is not seen, and a discharge on
or after it has not happened yet (the patient is still in).
"""

from __future__ import annotations

import datetime as dt

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from lakehouse.catalog import INDICATOR_INPATIENT_DAILY, INDICATOR_REGISTRY
from lakehouse.config import Beds
from lakehouse.gold.cohort import as_of_time

READMISSION_DAYS = 30
SECONDS_PER_DAY = 86400
PLACE = ["hospital_id", "department", "day"]


def stays(encounters: DataFrame, as_of: dt.date) -> DataFrame:
    """Inpatient stays admitted before the as-of instant; a later discharge is not known yet (null)."""
    cut = as_of_time(as_of)
    ended = F.col("discharge_time") < cut
    return (encounters.where((F.col("encounter_type") == "inpatient") & F.col("admit_time").isNotNull()
                             & (F.col("admit_time") < cut))
            .select("person_key", "encounter_key", "hospital_id",
                    F.coalesce("department", F.lit("?")).alias("department"), "admit_time",
                    F.when(ended, F.col("discharge_time")).alias("discharge_time"),
                    F.when(ended, F.col("discharge_disposition")).alias("disposition")))


def readmitted(discharged: DataFrame, all_stays: DataFrame) -> DataFrame:
    """Each alive discharge with `readmitted`: another inpatient admission of the person, at any hospital,
    in (discharge, discharge + 30 days]."""
    later = all_stays.select(F.col("person_key").alias("r_person"), F.col("admit_time").alias("r_admit"),
                             F.col("encounter_key").alias("r_encounter"))
    alive = discharged.where(F.coalesce(F.col("disposition"), F.lit("")) != "death")
    hit = ((F.col("r_person") == F.col("person_key")) & (F.col("r_encounter") != F.col("encounter_key"))
           & (F.col("r_admit") > F.col("discharge_time"))
           & (F.col("r_admit") <= F.col("discharge_time") + F.make_interval(days=F.lit(READMISSION_DAYS))))
    return (alive.join(later, hit, "left").groupBy("encounter_key", *PLACE)
            .agg(F.max(F.col("r_admit").isNotNull()).alias("readmitted")))


def midnight_census(in_hospital: DataFrame, as_of: dt.date) -> DataFrame:
    """Patients in a bed at the midnight that ends each day: admitted before it, not discharged before it."""
    first = F.to_date("admit_time")
    last = F.date_sub(F.to_date(F.coalesce(F.col("discharge_time"), as_of_time(as_of))), 1)
    return (in_hospital.where(last >= first)
            .select("hospital_id", "department", F.explode(F.sequence(first, last)).alias("day"))
            .groupBy(*PLACE).agg(F.count(F.lit(1)).alias("census_midnight")))


def beds_frame(spark: SparkSession, beds: Beds) -> DataFrame:
    rows = [(h, d, n) for h, departments in beds.hospitals.items() for d, n in departments.items()]
    return spark.createDataFrame(rows, "hospital_id STRING, department STRING, beds INT")


def inpatient_daily(spark: SparkSession, encounters: DataFrame, beds: Beds, as_of: dt.date) -> DataFrame:
    in_hospital = stays(encounters, as_of)
    admissions = (in_hospital.withColumn("day", F.to_date("admit_time")).groupBy(*PLACE)
                  .agg(F.count(F.lit(1)).alias("admissions")))
    discharged = in_hospital.where(F.col("discharge_time").isNotNull()).withColumn("day", F.to_date("discharge_time"))
    los = (F.col("discharge_time").cast("long") - F.col("admit_time").cast("long")) / SECONDS_PER_DAY
    discharges = discharged.groupBy(*PLACE).agg(
        F.count(F.lit(1)).alias("discharges"), F.count(F.when(F.col("disposition") == "death", 1)).alias("deaths"),
        F.avg(los).alias("los_mean_days"), F.median(los).alias("los_median_days"))
    readmissions = readmitted(discharged, in_hospital).groupBy(*PLACE).agg(
        F.count(F.lit(1)).alias("discharges_alive"), F.count(F.when(F.col("readmitted"), 1)).alias("readmissions_30d"))
    daily = (admissions.join(discharges, PLACE, "full").join(readmissions, PLACE, "full")
             .join(midnight_census(in_hospital, as_of), PLACE, "full")
             .join(F.broadcast(beds_frame(spark, beds)), ["hospital_id", "department"], "left"))
    for count in ("admissions", "discharges", "deaths", "census_midnight", "discharges_alive", "readmissions_30d"):
        daily = daily.withColumn(count, F.coalesce(count, F.lit(0)).cast("bigint"))
    return (daily
            .withColumn("beds", F.coalesce(F.col("beds"), F.lit(beds.default)).cast("int"))
            .withColumn("bed_occupancy", F.col("census_midnight") / F.col("beds"))
            .withColumn("readmission_rate_30d",
                        F.when(F.col("discharges_alive") > 0, F.col("readmissions_30d") / F.col("discharges_alive")))
            .withColumn("follow_up_complete", F.date_add("day", READMISSION_DAYS + 1) <= F.lit(as_of))
            .withColumn("inhospital_mortality",
                        F.when(F.col("discharges") > 0, F.col("deaths") / F.col("discharges")))
            .withColumn("as_of", F.lit(as_of))
            .select(*INDICATOR_INPATIENT_DAILY.columns))


def touched_days(changed_stays: DataFrame, as_of: dt.date) -> DataFrame:
    """The days whose indicators a changed stay (either image of it) can move: its stay from admission to
    discharge (or the as-of day), and the 30 days before its admission (discharges it may be a readmission of)."""
    first = F.date_sub(F.to_date("admit_time"), READMISSION_DAYS + 1)
    last = F.least(F.to_date(F.coalesce(F.col("discharge_time"), as_of_time(as_of))), F.lit(as_of))
    return (changed_stays.where(F.col("admit_time").isNotNull() & (last >= first))
            .select(F.explode(F.sequence(first, last)).alias("day")).distinct())


def registry_sizes(members: dict[str, DataFrame]) -> DataFrame | None:
    """Persons per registry and hospital of their index event, plus ALL (a person counts once there)."""
    frames = []
    for name, df in members.items():
        per_hospital = df.groupBy("hospital_id", "as_of").agg(F.countDistinct("person_key").alias("persons"))
        total = (df.groupBy("as_of").agg(F.countDistinct("person_key").alias("persons"))
                 .withColumn("hospital_id", F.lit("ALL")))
        frames.append(per_hospital.unionByName(total).withColumn("registry", F.lit(name)))
    if not frames:
        return None
    result = frames[0]
    for frame in frames[1:]:
        result = result.unionByName(frame)
    return result.select(*INDICATOR_REGISTRY.columns)
