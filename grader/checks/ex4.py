"""Checks of exercise 4 (Ulysses): the two all-to-all layouts, the heads check, and the attention."""

from __future__ import annotations

import torch

from grader import reference
from grader.checks import Check, Reads, member_positions, per_member, randn, register
from grader.checks.attention import SHAPE_READS, register_attention, sizes
from grader.compare import check_tensor
from grader.tasks.ex4 import FUNCTION, MODES
from grader.verdict import PASS, Kind, fail

register_attention("ex4", FUNCTION, MODES)

LAYOUT_HINT = ("After seq_to_head, rank r holds heads [r*H/P, (r+1)*H/P) of every token, the token axis "
               "being the shards of ranks 0..P-1 in rank order: all_to_all_single splits and concatenates "
               "along dim 0, so move the head axis there first (and back after).")


def _head_sharded(full: torch.Tensor, case, i: int) -> torch.Tensor:
    """What rank i holds after seq_to_head: its heads, every rank's token shard in rank order."""
    p = case.group_size
    h = full.shape[1]
    tokens = torch.cat(reference.shards(full, p, 2, case.scheme), dim=2)
    return tokens[:, i * h // p:(i + 1) * h // p].contiguous()


@register("ex4", "seq_to_head")
class SeqToHead(Check):
    """Both directions, each from its own tensor (x in, y back), so that neither input is the other's answer:
    a rank given seq shard and head shard of one tensor could return one as the other."""

    sends = ("seq", "head")  # x and y, the whole tensors, stay with the judge
    reads = Reads(**SHAPE_READS)

    def inputs(self, case):
        b, h, s, d = sizes(case)
        x, y = randn(case, b, h, s, d, salt=31), randn(case, b, h, s, d, salt=33)
        return per_member(case, lambda i: {"x": x, "y": y, "seq": reference.shard(x, i, case.group_size, 2, case.scheme),
                                           "head": _head_sharded(y, case, i)})

    def judge(self, case, inputs, outcomes):
        ranks = case.members
        for i, r in enumerate(ranks):
            x, y = inputs[r]["x"], inputs[r]["y"]
            verdict = check_tensor("seq_to_head(x)", outcomes[r].payload["to_head"], _head_sharded(x, case, i),
                                   rank=r, exact=True)
            if verdict:
                verdict.hint = LAYOUT_HINT
                return verdict
            verdict = check_tensor("head_to_seq(y)", outcomes[r].payload["to_seq"],
                                   reference.shard(y, i, case.group_size, 2, case.scheme), rank=r, exact=True,
                                   token_dim=2, positions=member_positions(case, i))
            if verdict:
                verdict.hint = "head_to_seq is the exact inverse of seq_to_head: the same all-to-all, reversed."
                return verdict
        return PASS


@register("ex4", "heads_error")
class HeadsError(Check):
    """H % P != 0 must raise ValueError naming heads on every rank, before any all-to-all (never a hang)."""

    sends = ("x",)
    reads = Reads(**SHAPE_READS)

    def inputs(self, case):
        b, h, s, d = sizes(case)
        return [{"x": randn(case, b, h, s // case.world_size, d, salt=32)} for _ in range(case.world_size)]

    def judge(self, case, inputs, outcomes):
        h = sizes(case)[1]
        for r in case.members:
            for fn, got in outcomes[r].payload.items():
                if got.get("raised") != "ValueError" or "heads" not in got.get("message", ""):
                    what = f"raised {got['message']}" if got.get("raised") else "returned normally"
                    return fail(Kind.CONTRACT, f"rank {r}: {fn} with H={h} heads on P={case.world_size} ranks "
                                               f"{what}; H % P != 0 must raise ValueError naming 'heads'")
        return PASS
