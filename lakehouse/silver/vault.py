"""The identity vault: a hospital record's direct identifiers, encrypted column by column.

Spark's built-in `aes_encrypt` (AES-256-GCM, a random IV per value, authenticated) runs on the
executors. The key never becomes a literal of a query: it travels as the one value of a one-row
DataFrame built from an RDD, so plans, the UI and event logs show `Scan ExistingRDD[...]`, never its
bytes. Every vault row also encrypts its own patient_key (`check_enc`): a wrong key is detected on a
few rows before a job writes anything, and a read with a wrong key fails loudly (GCM tag mismatch).
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from lakehouse import io
from lakehouse.catalog import IDENTITY
from lakehouse.errors import EnvironmentProblem
from lakehouse.io import Written

IDENTIFIERS = ("mrn", "name", "national_id", "birth_date", "phone", "address")
KEY_COLUMN = "_vault_key"
MODE = "GCM"


class VaultKeyError(EnvironmentProblem):
    """The vault key does not open the vault."""

    @property
    def advice(self) -> str:
        return ("set that variable (or its line in the secrets file) to the key the vault was written with; after "
                "`lakehouse vault rotate-key` that is the new key (docs/privacy.md)")


def key_frame(spark: SparkSession, key: bytes, column: str = KEY_COLUMN) -> DataFrame:
    """The key as data (one row, from an RDD), to cross-join where it is needed: never a literal in a plan."""
    rows = spark.sparkContext.parallelize([(bytearray(key),)], 1)
    return F.broadcast(spark.createDataFrame(rows, f"{column} BINARY"))


def encrypt(value: Column, key_column: str = KEY_COLUMN) -> Column:
    return F.aes_encrypt(value.cast("string"), F.col(key_column), F.lit(MODE))


def decrypt(value: Column, key_column: str = KEY_COLUMN) -> Column:
    """Fails the query (GCM tag mismatch) when the key is wrong: a vault never reads as wrong plaintext."""
    return F.aes_decrypt(value, F.col(key_column), F.lit(MODE)).cast("string")


def encrypted(identifiers: DataFrame, keys: DataFrame) -> DataFrame:
    """Rows of (patient_key, hospital_id, <IDENTIFIERS>, updated_at) in plaintext -> vault.identity rows."""
    return (identifiers.crossJoin(keys)
            .select("patient_key", "hospital_id", *[encrypt(F.col(c)).alias(f"{c}_enc") for c in IDENTIFIERS],
                    encrypt(F.col("patient_key")).alias("check_enc"), "updated_at"))


def check_key(spark: SparkSession, root: str, key: bytes, env_name: str, sample: int = 5) -> None:
    """Refuse a key that does not decrypt the vault's check values (a new, empty vault accepts any key)."""
    if not io.exists(spark, IDENTITY, root):
        return
    rows = (io.read(spark, IDENTITY, root).where(F.col("check_enc").isNotNull()).limit(sample)
            .crossJoin(key_frame(spark, key))
            .select((F.try_aes_decrypt("check_enc", F.col(KEY_COLUMN), F.lit(MODE)).cast("string")
                     == F.col("patient_key")).alias("ok")).collect())
    if rows and not all(r.ok for r in rows):
        raise VaultKeyError(f"the key in {env_name} does not open vault.identity at {IDENTITY.path(root)} "
                            f"(a wrong key, or the vault was re-keyed): nothing was written")


def plaintext(spark: SparkSession, root: str, key: bytes) -> DataFrame:
    """The vault decrypted (for the identity job only; never written anywhere)."""
    return (io.read(spark, IDENTITY, root).crossJoin(key_frame(spark, key))
            .select("patient_key", "hospital_id", *[decrypt(F.col(f"{c}_enc")).alias(c) for c in IDENTIFIERS],
                    "updated_at"))


def rotate(spark: SparkSession, root: str, old: bytes, new: bytes, env_name: str) -> Written:
    """Re-encrypt every value under `new` in one Delta commit. Earlier versions (old ciphertext) stay in the
    table's history until VACUUM removes their files."""
    check_key(spark, root, old, env_name)
    if not io.exists(spark, IDENTITY, root):
        raise VaultKeyError(f"there is no vault at {IDENTITY.path(root)} to re-key")
    # Delta reads a fixed snapshot, so the table can be rewritten from itself; plaintext never touches disk
    return io.overwrite(spark, encrypted(plaintext(spark, root, old), key_frame(spark, new)), IDENTITY, root)
