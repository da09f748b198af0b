"""`python -m grader COMMAND`: see grader.cli."""

import sys

# The commands that fork from a server (grader.zygote): rank pools, or for `batch` its workers. The
# server is a fork of this process, made now: a fresh interpreter that has imported torch and nothing of
# the grader's own, so the server need not import torch again, and what it forks holds nothing of what
# this process goes on to load (checks, references, the manifest).
SERVER_COMMANDS = ("check", "grade", "bench", "batch")

if __name__ == "__main__":
    if sys.argv[1:2] and sys.argv[1] in SERVER_COMMANDS:
        import torch.distributed  # noqa: F401

        from grader import zygote

        zygote.shared().start(fork=True)
    from grader.cli import main

    sys.exit(main())
