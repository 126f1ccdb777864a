"""The `vapm` command (`main`) and its subcommands, one module each: argument parsing and printing, the work
done by the library below. `python -m vapm` is the same command.

May import: every other layer.
"""
