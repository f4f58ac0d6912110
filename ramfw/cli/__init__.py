"""The command line (`ramfw ...`): the typer app, one module per command group, no logic of its
own: each command parses its options, calls into `ramfw.daemon` or `ramfw.report`, prints the
result and maps errors to exit codes (the contract in DESIGN.md). May import every other folder;
nothing imports it.
"""
