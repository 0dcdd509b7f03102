"""Keys and secrets: from the environment, or from an ignored KEY=VALUE file. Never from git."""

from __future__ import annotations

import os
import secrets as pysecrets
from pathlib import Path

from lakehouse.config import Settings
from lakehouse.errors import EnvironmentProblem

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
    file.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"{name}={existing.get(name) or pysecrets.token_hex(KEY_BYTES)}" for name in names]
    file.write_text("# lakehouse secrets: keep out of git; losing them breaks pseudonym stability\n"
                    + "\n".join(lines) + "\n")
    file.chmod(0o600)
    return file, True
