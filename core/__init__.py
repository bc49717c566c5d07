"""Conveyor: a plugin-oriented job queue and workflow orchestrator.

The public API is re-exported here; modules prefixed with ``_`` are private.
"""

from . import commands, wire
from ._gc import tune_gc
from ._version import __version__
from .app import Conveyor
from .client import Client, SyncClient, connect, connect_sync
from .config import Settings
from .errors import (
    ClientConnectionError,
    ConveyorError,
    DuplicateKeyError,
    InvalidStateError,
    JobNotFoundError,
    LimitExceededError,
    ParseError,
    PluginError,
    QueuePausedError,
    RateLimitedError,
    ScheduleNotFoundError,
    StorageError,
    StorageUnavailableError,
    UnauthorizedError,
    UnknownCommandError,
    ValidationError,
    WebhookNotFoundError,
    error_for_code,
)
from .hookspecs import hookimpl
from .interfaces import EventSink, ProtocolServer, Worker
from .models import (
    AckItem,
    AckResult,
    Backoff,
    Event,
    FailOutcome,
    FlowSpec,
    FlowStatus,
    FlowStep,
    FlowSubmitted,
    FlowSummary,
    FollowUp,
    Job,
    JobOptions,
    JobSpec,
    JobState,
    LogEntry,
    QueueCounts,
    QueueInfo,
)
from .schedules import Schedule, ScheduleSpec
from .storage import Storage
from .sync import SyncConveyor
from .workers import WorkerRegistry

__all__ = [
    "__version__", "tune_gc", "AckItem", "AckResult", "Client", "ClientConnectionError", "SyncClient", "connect", "connect_sync", "commands", "wire", "Backoff", "Conveyor", "ConveyorError", "DuplicateKeyError", "Event",
    "EventSink", "FailOutcome", "FlowSpec", "FlowStatus", "FlowStep", "FlowSubmitted", "FlowSummary", "FollowUp", "InvalidStateError", "Job", "JobNotFoundError", "JobOptions",
    "JobSpec", "JobState", "LimitExceededError", "LogEntry", "ParseError", "PluginError", "ProtocolServer",
    "QueueCounts", "QueueInfo", "QueuePausedError", "RateLimitedError", "Schedule", "ScheduleNotFoundError", "ScheduleSpec",
    "Settings", "Storage", "StorageError", "StorageUnavailableError", "SyncConveyor", "UnauthorizedError",
    "UnknownCommandError", "ValidationError", "WebhookNotFoundError", "Worker", "WorkerRegistry",
    "error_for_code", "hookimpl",
]  # fmt: skip
