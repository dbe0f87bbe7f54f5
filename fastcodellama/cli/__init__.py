"""The command line: each subcommand in its own module, engine options defined once (options.py)."""
