"""`python -m grader COMMAND`: see grader.cli."""

import sys

# The commands that fork rank pools. Their rank server is a fork of this process, made now: a fresh
# interpreter that has imported torch and nothing of the grader's own, so the server need not import
# torch again, and the ranks hold nothing of what this process goes on to load (checks, references,
# the manifest). `batch` is not one: its workers fork their rank servers the same way (grader.batch).
RANK_COMMANDS = ("check", "grade", "bench")

if __name__ == "__main__":
    if sys.argv[1:2] and sys.argv[1] in RANK_COMMANDS:
        import torch.distributed  # noqa: F401

        from grader import zygote

        zygote.shared().start(fork=True)
    from grader.cli import main

    sys.exit(main())
