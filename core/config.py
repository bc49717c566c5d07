"""Settings, from arguments or ``CONVEYOR_*`` environment variables (pydantic-settings)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_STORAGE = "sqlite:///./conveyor.db"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CONVEYOR_", extra="forbid")

    storage: str = Field(
        DEFAULT_STORAGE, description="Storage URL: sqlite:///path, sqlite:///:memory:, postgresql://..."
    )
    stall_timeout_ms: int = Field(
        30_000, ge=100, description="An active job without heartbeat for this long is stalled."
    )
    sqlite_synchronous: Literal["FULL", "NORMAL"] = Field(
        "FULL",
        description="SQLite durability. FULL (default): a returned call survives power loss. NORMAL: "
        "survives a crash of this process, but the last commits may be lost on power loss; "
        "commits skip the fsync.",
    )
    max_dag_depth: int = Field(10, ge=1, le=64, description="Longest chain of depends_on a job may end.")
    maintenance_interval_ms: int = Field(500, ge=10, description="Pause between maintenance sweeps.")
    maintenance: bool = Field(True, description="Run the maintenance loop in this process.")
    event_buffer: int = Field(10_000, ge=1, description="Events buffered per sink before dropping.")
    disable_plugins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Plugin names to block (built-in short names or entry-point names)."
    )
    plugin_autoload: bool = Field(True, description="Load plugins from the 'conveyor' entry-point group.")

    @field_validator("disable_plugins", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value
