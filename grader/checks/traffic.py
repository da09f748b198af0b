"""Does the communication record tell the truth? The record's calls against the kernel's byte counts.

The in-rank record (grader/instrument.py) names each call, its tensors and
its peers, which is what an explanation needs; but it is written by code in
the student's process, which can bypass it (a ProcessGroup method, a
function's __wrapped__, functional collectives, switching the trace off) or
write to it. The parent's own evidence is the kernel's count of the bytes each
rank received from each peer during the call (grader/sockets.py). A verdict
about communication stands only when the two agree: every byte the kernel
counted must be one the record accounts for, and every call the record shows
must have moved its bytes.

What a call implies a rank receives, measured on gloo here
(`python benchmarks/traffic.py` prints it per op and P, beside these bounds),
P the group's size and N the bytes of the rank's own tensor: all_gather
(P-1)·N (gloo runs it as a ring: all from the previous rank), all_to_all
(P-1)/P·N (N/P from each peer), recv N from its peer, all_reduce and
reduce_scatter_tensor 2·(P-1)/P·N (at N = 512 KiB: 1.00, 1.34, 1.50, 1.76 N
at P = 2, 3, 4, 8; a reduce_scatter of a list of chunks more: twice what it
lists is its bound). Each message also carries gloo's framing and control
bytes: on the solutions' cases at most 288 bytes per message (an all_gather
of P=8 sends 7), SLACK_PER_MESSAGE allows 384. The cases of ex3-ex5 make a
rank's K shard at least 4 KiB, so that a transfer the record does not show is
far above that allowance.
"""

from __future__ import annotations

from typing import Any

from grader.verdict import Kind, Verdict, fail

GATHER_INTO = {"all_gather_into_tensor", "all_gather_single", "_all_gather_base"}
SLACK_PER_MESSAGE = 384  # bytes: gloo's framing and control, per message a call sends
SLACK = 1024             # bytes, per rank and case
RELATIVE = 0.02
# bytes a rank may receive between its end of the call and the last answer: nothing moves then (the
# solutions' 124 cases: 0 on every rank), so this only absorbs a stray frame
LATE = SLACK


def implied(call: dict, world: int) -> tuple[float, float]:
    """(least, most) bytes this call makes its rank receive, by the record's own description of it."""
    op, tensors = call.get("op", ""), call.get("tensors") or []
    n = len(call["group"]) if call.get("group") else world
    sizes = [int(t.get("bytes", 0)) for t in tensors]
    total = sum(sizes)
    if op in ("send", "isend", "barrier", "monitored_barrier") or n <= 1:
        return 0.0, 0.0
    if op in ("recv", "irecv"):
        return float(sizes[0]) if sizes else 0.0, float(sizes[0]) if sizes else 0.0
    if op == "all_gather" and sizes:
        return (n - 1) * sizes[-1], (n - 1) * sizes[-1]
    if op in GATHER_INTO and len(sizes) >= 2:
        return (n - 1) * sizes[1], (n - 1) * sizes[1]
    if op == "all_to_all_single" and len(sizes) >= 2:
        return 0.0, float(sizes[1])  # uneven splits move anything from none to all of it
    if op == "all_to_all":
        return 0.0, total / 2
    if op == "all_reduce":
        return 0.0, 2.0 * (n - 1) / n * total  # gloo's ring: a reduce-scatter, then an all-gather
    if op in ("reduce_scatter", "reduce_scatter_tensor", "reduce_scatter_single", "_reduce_scatter_base"):
        return 0.0, 2.0 * total  # output and input(s) together bound every algorithm gloo picks
    return 0.0, (n - 1) * float(total)


def messages(call: dict, world: int) -> int:
    """How many messages the call's algorithm sends on gloo: one per ring step, one per peer, or one."""
    n = len(call["group"]) if call.get("group") else world
    op = call.get("op", "")
    if op in ("send", "isend", "recv", "irecv"):
        return 1
    if op in ("all_reduce", "reduce_scatter", "reduce_scatter_tensor", "reduce_scatter_single",
              "_reduce_scatter_base", "barrier", "monitored_barrier"):
        return 2 * n
    return n


def slack(calls: list[dict], world: int) -> int:
    return SLACK + SLACK_PER_MESSAGE * sum(messages(c, world) for c in calls)


def judge_record(case: Any, outcomes: list) -> Verdict | None:
    """Fail when a rank received bytes its record does not account for, or its record claims bytes that
    never arrived."""
    world = len(outcomes)
    if any(outcomes[r].received is None for r in case.members):
        return None  # launched by torchrun: no sandbox, no kernel evidence, the record alone
    for r in case.members:
        o = outcomes[r]
        if o.late > LATE:
            return fail(Kind.RECORD_MISMATCH, (
                f"rank {r} received {o.late} bytes from its peers after its call had told the grader it "
                f"returned, by the kernel's count: code in the rank ended the call's window early, and the "
                f"communication record does not match what the ranks actually sent"), detail=describe(o))
        calls = [c for c in o.trace if c.get("done", True) and "op" in c]
        bounds = [implied(c, world) for c in calls]
        least, most = sum(b[0] for b in bounds), sum(b[1] for b in bounds)
        got = sum(o.received.values())
        allowed = slack(calls, world)
        if got > most * (1 + RELATIVE) + allowed:
            return fail(Kind.RECORD_MISMATCH, (
                f"rank {r} received {got} bytes from its peers during the call, by the kernel's count of its "
                f"sockets, but its record of torch.distributed calls ({len(calls)} calls) accounts for at most "
                f"{int(most)}: the communication record does not match what the ranks actually sent"),
                detail=describe(o), hint=(
                "Every transfer must go through torch.distributed's own functions (dist.all_gather, "
                "dist.isend, ...), which the grader records; communication it cannot see is not graded as "
                "the exercise's pattern."))
        if got < least * (1 - RELATIVE) - allowed:
            return fail(Kind.RECORD_MISMATCH, (
                f"rank {r}'s record of torch.distributed calls claims at least {int(least)} bytes received, "
                f"but the kernel counted {got} on its sockets: the communication record does not match what "
                f"the ranks actually sent"), detail=describe(o))
    return None


def describe(outcome: Any) -> str:
    return "bytes received per peer (kernel): " + (", ".join(
        f"from {'a non-rank' if p == -1 else f'rank {p}'}: {b}" for p, b in sorted((outcome.received or {}).items()))
        or "none")


def from_peers(outcome: Any, peers: set[int]) -> int:
    return sum(b for p, b in (outcome.received or {}).items() if p not in peers)
