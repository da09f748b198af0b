"""Verdicts: what happened in a case, as a kind and a message a student can act on.

Every front reports the same verdicts. A kind has a short label and one
paragraph that explains it in general; the message says what happened in this
case (which rank, which tensor, which token); the hint, from the manifest or
the check, says where to look.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Kind(str, enum.Enum):
    PASSED = "passed"
    NOT_IMPLEMENTED = "not implemented yet"
    MISSING = "missing"
    SYNTAX_ERROR = "syntax error"
    EXCEPTION = "exception"
    WRONG_TYPE = "wrong type"
    WRONG_SHAPE = "wrong shape"
    WRONG_DTYPE = "wrong dtype"
    WRONG_DEVICE = "wrong device"
    NAN_INF = "NaN or Inf"
    MISMATCH = "numeric mismatch"
    CONTRACT = "contract"
    COMMUNICATION = "communication"
    RECORD_MISMATCH = "record mismatch"
    COMPUTE = "compute"
    MEMORY = "memory"
    CAUSALITY = "causality"
    TIMEOUT = "timeout or deadlock"
    LIMIT = "resource limit"
    CRASHED = "rank crashed"
    EARLY_EXIT = "early exit"
    SKIPPED = "skipped"
    GRADER_ERROR = "grader error"


EXPLAIN = {
    Kind.NOT_IMPLEMENTED: "The function still raises NotImplementedError: replace the stub's body.",
    Kind.MISSING: "The grader could not find the file or function it calls. Keep the names of the stub.",
    Kind.SYNTAX_ERROR: "The file does not compile, so none of its functions can run; the other "
                       "exercises are graded as usual.",
    Kind.EXCEPTION: "Your code raised an exception on at least one rank. The first rank to fail is "
                    "shown, with the line of your file it came from.",
    Kind.WRONG_TYPE: "The function returned something other than what the contract names.",
    Kind.WRONG_SHAPE: "The result has the wrong shape: check which axis is sharded and how many "
                      "tokens this rank holds.",
    Kind.WRONG_DTYPE: "The result has the wrong dtype: outputs keep the input's dtype unless the "
                      "contract says otherwise.",
    Kind.WRONG_DEVICE: "The result lives on another device than the inputs: create helper tensors "
                       "on the inputs' device.",
    Kind.NAN_INF: "The result holds NaN or Inf where the reference is finite: look for exp() of large "
                  "numbers, log(0), or 0/0 in rows that see no key.",
    Kind.MISMATCH: "The result differs from the single-device float64 reference by more than the "
                   "tolerance. The worst element is named by rank and global token.",
    Kind.CONTRACT: "The function does not behave as the contract says (an error it should raise, an "
                   "input it should leave unchanged, a property every rank must share).",
    Kind.COMMUNICATION: "The values may be right, but the communication is not the pattern this "
                        "exercise teaches; the per-rank record of torch.distributed calls shows it.",
    Kind.RECORD_MISMATCH: "The bytes the kernel counted on the ranks' sockets do not match the "
                          "record of torch.distributed calls: data moved outside the calls the grader "
                          "sees, or the record claims traffic that never happened.",
    Kind.COMPUTE: "The per-rank attention work (counted in FLOPs) is not what the algorithm should do.",
    Kind.MEMORY: "Peak live tensor memory on a rank grows where it should stay bounded.",
    Kind.CAUSALITY: "An output depends on tokens after its own position: the future leaks.",
    Kind.TIMEOUT: "The case did not finish: a rank used up its CPU budget (an endless loop), or every "
                  "rank sat waiting with no progress (a deadlock). The trace shows which call each "
                  "rank waits in: ranks that wait on each other are deadlocked.",
    Kind.LIMIT: "A rank went past one of the sandbox's limits (memory, file size, open files, "
                "processes, answer size); the message names which.",
    Kind.CRASHED: "A rank process died from a signal (a segfault, or killed) before returning.",
    Kind.EARLY_EXIT: "A rank process ended before returning its result (sys.exit, os._exit, or a "
                     "crash of the interpreter).",
    Kind.SKIPPED: "The case cannot run here (for example, fewer GPUs than ranks); it is neither "
                  "passed nor failed.",
    Kind.GRADER_ERROR: "The grader itself failed on this case. This is a bug in the kit: report it.",
}


@dataclass
class Verdict:
    kind: Kind
    message: str = ""
    hint: str = ""
    detail: str = ""
    # rests on CPU time the kernel measured, which a busy machine can skew: it stands only when the case
    # ends the same way when run again (grading.MEASURES)
    timed: bool = False

    @property
    def passed(self) -> bool:
        return self.kind is Kind.PASSED

    @property
    def skipped(self) -> bool:
        return self.kind is Kind.SKIPPED


PASS = Verdict(Kind.PASSED)


def fail(kind: Kind, message: str, hint: str = "", detail: str = "", timed: bool = False) -> Verdict:
    return Verdict(kind, message, hint, detail, timed)
