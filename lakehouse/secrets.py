"""Keys and secrets: from the environment, or from an ignored KEY=VALUE file. Never from git."""

from __future__ import annotations

import os
import secrets as pysecrets
from pathlib import Path

from lakehouse.config import Settings
from lakehouse.errors import EnvironmentProblem, UsageError

KEY_BYTES = 32  # AES-256 and HMAC-SHA256 keys


def _file_values(path: Path) -> dict[str, str]:
    if not path.exists():
        return {}
    values = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def get_key(settings: Settings, env_name: str) -> bytes:
    """A 32-byte key given as 64 hex characters in `env_name` or the secrets file."""
    file = Path(settings.path(settings.main.secrets.file))
    value = os.environ.get(env_name) or _file_values(file).get(env_name)
    if not value:
        raise EnvironmentProblem(
            f"secret {env_name} is not set: export it (64 hex characters) or run `lakehouse init-secrets` "
            f"to create {file}"
        )
    try:
        key = bytes.fromhex(value)
    except ValueError:
        key = b""
    if len(key) != KEY_BYTES:
        raise EnvironmentProblem(f"secret {env_name} must be {KEY_BYTES * 2} hex characters")
    return key


def pseudonym_key(settings: Settings) -> bytes:
    return get_key(settings, settings.main.secrets.pseudonym_key_env)


def vault_key(settings: Settings) -> bytes:
    return get_key(settings, settings.main.secrets.vault_key_env)


def init_secrets(settings: Settings) -> tuple[Path, bool]:
    """Create the secrets file with fresh random keys unless it exists. Never overwrites a key."""
    file = Path(settings.path(settings.main.secrets.file))
    names = (settings.main.secrets.pseudonym_key_env, settings.main.secrets.vault_key_env)
    existing = _file_values(file)
    if all(name in existing for name in names):
        return file, False
    _write(file, {**existing, **{name: existing.get(name) or pysecrets.token_hex(KEY_BYTES) for name in names}})
    return file, True


def new_key() -> bytes:
    return pysecrets.token_bytes(KEY_BYTES)


def _write(file: Path, values: dict[str, str]) -> None:
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text("# lakehouse secrets: keep out of git; losing them breaks pseudonym stability\n"
                    + "".join(f"{k}={v}\n" for k, v in values.items()))
    file.chmod(0o600)


def stage_key(settings: Settings, env_name: str, key: bytes) -> Path:
    """Save a key being rotated in as `<env_name>_NEXT` in the secrets file, before any data changes, so a
    failure half-way never loses it. The current key must come from that file, not the environment."""
    if os.environ.get(env_name):
        raise UsageError(f"{env_name} is set in the environment: give the new key with --new-key-env and "
                         f"update the environment yourself after the rotation")
    file = Path(settings.path(settings.main.secrets.file))
    values = _file_values(file)
    values[f"{env_name}_NEXT"] = key.hex()
    _write(file, values)
    return file


def promote_key(settings: Settings, env_name: str) -> None:
    """After a successful rotation: the staged key becomes the key; the old one is forgotten."""
    file = Path(settings.path(settings.main.secrets.file))
    values = _file_values(file)
    values[env_name] = values.pop(f"{env_name}_NEXT")
    _write(file, values)
