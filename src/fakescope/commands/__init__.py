"""The subcommands of `fakescope`, one module per group; each exposes ``add(subparsers)``."""
