"""CLI commands, one module per stage group; `tether.cli` registers them on the app."""
