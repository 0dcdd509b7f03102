"""Errors that the CLI turns into one clear line and an exit code."""


class LakehouseError(Exception):
    """A failure the user can act on. `exit_code` is what the CLI returns."""

    exit_code = 1

    @property
    def advice(self) -> str:
        """What to do about it, when the message does not already say."""
        return ""


class ConfigError(LakehouseError):
    """A bad configuration, refused before any data is touched."""

    exit_code = 2

    def __init__(self, file: str, key: str, message: str):
        self.file, self.key, self.message = file, key, message
        super().__init__(f"config error in {file}: key '{key}': {message}")

    @property
    def advice(self) -> str:
        return f"fix '{self.key}' in {self.file} and run the command again; nothing was read or written"


class EnvironmentProblem(LakehouseError):
    """Something outside the project is missing (Java, the jar cache, a key)."""

    exit_code = 2


class UsageError(LakehouseError):
    """Invalid command-line arguments."""

    exit_code = 2
