"""Settings, from arguments, ``CONVEYOR_*`` environment variables or a TOML file
(pydantic-settings), in that order of precedence."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import pydantic
from pydantic import Field, field_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from .errors import ValidationError

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

    shell_engine: bool = Field(
        False, description="Enable the built-in shell engine, which runs the command a job names."
    )

    # -- events, webhooks and metrics ---------------------------------------------------------
    cluster_events: bool = Field(
        True,
        description="On shared storage (PostgreSQL), publish this node's events to the other nodes' "
        "WebSocket clients and webhooks through the event log table.",
    )
    event_retention_s: float = Field(
        3600.0, gt=0, description="How long the shared event log keeps an event for nodes that lag behind."
    )
    webhook_allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Host names webhooks may target ('*.example.com' allows subdomains); empty: any host.",
    )
    webhook_timeout_s: float = Field(5.0, gt=0, description="Each webhook delivery attempt must finish within this.")
    webhook_retries: int = Field(3, ge=0, le=10, description="Retries after a failed delivery (5xx, timeout, refused).")
    webhook_retry_base_ms: int = Field(
        1000, ge=1, description="First retry delay; each further retry waits twice as long."
    )
    webhook_concurrency: int = Field(16, ge=1, le=1000, description="Webhook requests in flight at once.")
    webhook_max_pending: int = Field(
        10_000, ge=1, description="Deliveries waiting or retrying; more are dropped and counted in metrics."
    )
    websocket_buffer: int = Field(
        1000, ge=1, description="Events queued for one WebSocket client; a client that falls further behind is dropped."
    )
    websocket_origins: list[str] = Field(
        default_factory=list,
        description=(
            "Browser origins (``https://ops.example``) besides the server's own that may open the events "
            "WebSocket; a page from any other origin is refused, so it cannot read events from a browser "
            "on the operator's machine when auth is off."
        ),
    )
    metrics_refresh_s: float = Field(
        5.0, gt=0, description="How often the queue depth gauges are refreshed for a host-installed recorder."
    )

    # -- server mode (`conveyor serve`) ---------------------------------------------------------
    host: str = Field("127.0.0.1", min_length=1, description="Address the protocol servers listen on.")
    http_port: int = Field(6790, ge=0, le=65535, description="HTTP port (0: any free port, logged at start).")
    tcp_port: int = Field(6789, ge=0, le=65535, description="TCP port (0: any free port, logged at start).")
    auth_tokens: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Bearer tokens accepted by HTTP and TCP (comma-separated in the environment). Empty: auth is off.",
    )
    max_request_bytes: int = Field(
        2 * 1024 * 1024,
        ge=1024,
        description="Largest HTTP request body or TCP request line; larger ones are refused, never parsed.",
    )
    tcp_idle_timeout_s: float = Field(
        300.0, gt=0, description="A TCP connection that sends no request for this long is closed."
    )
    tcp_request_timeout_s: float = Field(
        30.0, gt=0, description="A TCP client must finish a request line, and accept a reply, within this."
    )
    tcp_max_connections: int = Field(
        10_000,
        ge=1,
        description="TCP connections served at once; one more is answered RATE_LIMITED and closed. The open-file"
        " limit is raised to fit (up to its hard limit), else this is lowered to fit.",
    )
    shutdown_grace_s: float = Field(
        30.0, ge=0, description="On SIGTERM/SIGINT, how long in-flight requests may take to finish."
    )

    @field_validator("disable_plugins", "auth_tokens", "webhook_allowed_hosts", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("auth_tokens")
    @classmethod
    def _no_blank_tokens(cls, tokens: list[str]) -> list[str]:
        if any(not token.strip() for token in tokens):
            raise ValueError("auth tokens must not be blank")
        return tokens

    @classmethod
    def load(cls, config_file: str | Path | None = None, **overrides: Any) -> Settings:
        """Settings from ``overrides`` (command-line values), then ``CONVEYOR_*`` variables,
        then ``config_file`` (TOML, the same keys at top level), then defaults. Errors name
        the setting and, for the file, the file."""
        path = Path(config_file) if config_file is not None else None
        if path is not None and not path.is_file():
            raise ValidationError(f"config file {str(path)!r} does not exist", field="config")

        class _WithFile(cls):  # type: ignore[valid-type, misc]
            @classmethod
            def settings_customise_sources(
                cls,
                settings_cls: type[BaseSettings],
                init_settings: PydanticBaseSettingsSource,
                env_settings: PydanticBaseSettingsSource,
                dotenv_settings: PydanticBaseSettingsSource,
                file_secret_settings: PydanticBaseSettingsSource,
            ) -> tuple[PydanticBaseSettingsSource, ...]:
                sources: tuple[PydanticBaseSettingsSource, ...] = (init_settings, env_settings)
                if path is not None:
                    sources += (TomlConfigSettingsSource(settings_cls, toml_file=path),)
                return sources

        where = f" (command line, CONVEYOR_* environment or {path})" if path else ""
        try:
            loaded = _WithFile(**{k: v for k, v in overrides.items() if v is not None})
        except pydantic.ValidationError as exc:
            err = exc.errors(include_url=False)[0]
            name = ".".join(str(part) for part in err["loc"])
            message = "unknown setting" if err["type"] == "extra_forbidden" else err["msg"]
            raise ValidationError(f"setting {name}: {message}{where}", field=name) from None
        except ValueError as exc:  # a TOML syntax error
            raise ValidationError(f"config file {str(path)!r} is not valid TOML: {exc}", field="config") from None
        return cls.model_validate(loaded.model_dump())
