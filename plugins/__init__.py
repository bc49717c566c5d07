"""Built-in plugins. Each is an ordinary plugin module using the public hooks, registered by
short name (see ``conveyor._plugins.BUILTIN_PLUGINS``) and blockable like any other."""
