"""The subcommands: one module each, its arguments and its run function."""
