"""One module per `python -m grader` command: `configure(parser)` and `run(args) -> exit code`."""
