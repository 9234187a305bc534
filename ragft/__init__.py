"""ragft's one command for users: `ragft <subcommand>` runs the project's entry points (ragft.cli)."""
