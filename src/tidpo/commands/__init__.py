"""Command implementations registered by `tidpo.cli` (one module per command)."""
