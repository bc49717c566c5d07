"""The plugin manager: hookspecs, blocked names, built-ins, entry points, then validation."""

from __future__ import annotations

import importlib
import importlib.metadata
import os
from collections.abc import Iterable

import pluggy

from . import hookspecs
from .errors import PluginError

BUILTIN_PLUGINS: dict[str, str] = {
    "sql": "conveyor.plugins.sql",
    "http": "conveyor.plugins.http",
    "tcp": "conveyor.plugins.tcp",
    "webhooks": "conveyor.plugins.webhooks",
    "metrics": "conveyor.plugins.metrics",
}
"""Built-in plugins by short name; block one with ``disable_plugins=["sql"]``."""

ENTRY_POINT_GROUP = "conveyor"
AUTOLOAD_ENV = "CONVEYOR_DISABLE_PLUGIN_AUTOLOAD"


def make_plugin_manager(
    *, disable: Iterable[str] = (), autoload: bool = True, extra: Iterable[object] = ()
) -> pluggy.PluginManager:
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    for name in disable:
        pm.set_blocked(name)
    for short, module_name in BUILTIN_PLUGINS.items():
        if not pm.is_blocked(short):
            pm.register(importlib.import_module(module_name), name=short)
    if autoload and not os.environ.get(AUTOLOAD_ENV):
        _load_entry_points(pm)
    for plugin in extra:
        _register(pm, plugin, None, "")
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(f"plugin {exc.plugin!r} implements an unknown hook: {exc}") from None
    return pm


def _register(pm: pluggy.PluginManager, plugin: object, name: str | None, origin: str) -> None:
    try:
        pm.register(plugin, name=name)
    except (pluggy.PluginValidationError, ValueError) as exc:
        raise PluginError(f"plugin {name or plugin!r}{origin} cannot be registered: {exc}") from None


def _load_entry_points(pm: pluggy.PluginManager) -> None:
    for dist in importlib.metadata.distributions():
        for ep in dist.entry_points:
            if ep.group != ENTRY_POINT_GROUP or pm.is_blocked(ep.name) or pm.get_plugin(ep.name):
                continue
            origin = f" from package {dist.metadata['name']!r}"
            try:
                plugin = ep.load()
            except Exception as exc:  # noqa: BLE001 - turned into the host's error, never skipped
                raise PluginError(f"plugin {ep.name!r}{origin} failed to load: {type(exc).__name__}: {exc}") from exc
            _register(pm, plugin, ep.name, origin)
