"""Held-out variants of the exercises, each written as the few edits it makes to its solution.

A variant is a name (exN_correct_* or exN_bug_*), the file of solutions/ it
edits, the class of bug it stands for (for a correct variant: how it differs),
its edits, and what grading it must give: full marks, or the case it must
lose, with the failure kind and a text its message or hint must contain
(tests/test_variants.py grades them).

An edit is (old, new): `old` is exact text that must occur exactly once in the
solution (and still once after the variant's earlier edits), or a Span(first,
last) for a whole function body that a variant rewrites: the text from `first`,
which must occur exactly once, through the next `last`. apply() makes the
variant's source at test time; when a change to solutions/ removes or
duplicates the text an edit replaces, it raises StaleEdit naming the variant
and the text, and that variant's test fails: update the edit to the solution as
it is now, keeping the bug it stands for.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from grader.verdict import Kind

SOLUTIONS = Path(__file__).resolve().parents[2] / "solutions"


class StaleEdit(Exception):
    """An edit of a variant no longer applies to its solution."""


@dataclass(frozen=True)
class Span:
    """The text from `first` (exactly once in the solution) through the next occurrence of `last`."""

    first: str
    last: str


@dataclass(frozen=True)
class Fails:
    """The case a buggy variant must lose, its failure kind, and a text of its message or hint."""

    case: str
    kind: Kind
    text: str


@dataclass(frozen=True)
class Variant:
    name: str
    solution: str  # a file name in solutions/
    bug: str  # one line: the bug class; for a correct variant, what it does differently
    edits: list[tuple[str | Span, str]] = field(default_factory=list)
    fails: Fails | None = None  # None: full marks on every case of the exercise
    bonus: bool = True  # False: leaves the bonus alone, whose cases must then read "not attempted"

    @property
    def exercise(self) -> str:
        return self.name.split("_")[0]


def _describe(old: str | Span) -> str:
    if isinstance(old, Span):
        return f"the span from\n{_quote(old.first)}\nthrough the next\n{_quote(old.last)}"
    return _quote(old)


def _quote(text: str) -> str:
    return "\n".join(f"    | {line}" for line in text.rstrip("\n").split("\n"))


def _locate(old: str | Span, text: str) -> tuple[int, int] | str:
    """(start, stop) of the unique occurrence of `old` in `text`, or why there is none."""
    first = old.first if isinstance(old, Span) else old
    count = text.count(first)
    if count != 1:
        return f"occurs {count} times"
    start = text.index(first)
    if not isinstance(old, Span):
        return start, start + len(old)
    stop = text.find(old.last, start + len(first))
    if stop < 0:
        return "has no end after its first line"
    return start, stop + len(old.last)


def apply(variant: Variant, source: str | None = None) -> str:
    """The variant's source: its solution (or `source`) with every edit applied, in order."""
    solution = (SOLUTIONS / variant.solution).read_text() if source is None else source
    text = solution
    for number, (old, new) in enumerate(variant.edits, 1):
        where = _locate(old, solution)
        if not isinstance(where, str):
            where = _locate(old, text)
        if isinstance(where, str):
            raise StaleEdit(
                f"variant {variant.name}: edit {number} of {len(variant.edits)} no longer applies to "
                f"solutions/{variant.solution}: the text it replaces {where} (it must occur exactly "
                f"once):\n{_describe(old)}\nUpdate the edit to the solution as it is now, keeping "
                f"the bug it stands for: {variant.bug}")
        start, stop = where
        text = text[:start] + new + text[stop:]
    if text == solution:
        raise StaleEdit(f"variant {variant.name}: its edits leave solutions/{variant.solution} unchanged")
    return text


EX1, EX2, EX3, EX4 = ("ex1_sequence_shard.py", "ex2_blockwise_attention.py",
                      "ex3_allgather_attention.py", "ex4_ulysses_attention.py")
EX5, EX6, EX7 = "ex5_ring_attention.py", "ex6_loss.py", "ex7_cp_train_step.py"
REMOTE_KEYS = "only at tokens that see keys held by other ranks"

VARIANTS = [
    # ---- ex1: sequence sharding
    Variant(
        "ex1_correct_permutation", EX1,
        "every rank's positions are rows of one layout table; unshard by index_copy_, gather by all_gather_into_tensor",
        [("SCHEMES = (\"contiguous\", \"zigzag\", \"striped\")\n", '''\
SCHEMES = ("contiguous", "zigzag", "striped")


def _layout(seq_len, world_size, scheme):
    if scheme not in ("contiguous", "zigzag", "striped"):
        raise ValueError(f"unknown scheme {scheme!r}")
    if world_size <= 0:
        raise ValueError("world_size must be positive")
    parts = 2 * world_size if scheme == "zigzag" else world_size
    if seq_len % parts:
        raise ValueError(f"seq_len={seq_len} is not divisible into {parts} parts")
    idx = torch.arange(seq_len)
    if scheme == "contiguous":
        return idx.view(world_size, -1)
    if scheme == "striped":
        return idx.view(-1, world_size).t()
    chunks = idx.view(parts, -1)
    return torch.stack([torch.cat([chunks[r], chunks[parts - 1 - r]]) for r in range(world_size)])
'''),
         (Span("    if scheme not in SCHEMES:\n", "    return torch.arange(rank, seq_len, world_size)\n"), '''\
    table = _layout(seq_len, world_size, scheme)
    if rank < 0 or rank >= world_size:
        raise ValueError(f"rank {rank} out of range")
    return table[rank].clone()
'''),
         (Span("    if not -x.dim() <= dim < x.dim():\n", "the shard never aliases x\n"), '''\
    dim = dim if dim >= 0 else dim + x.dim()
    pos = shard_positions(x.size(dim), rank, world_size, scheme)
    return torch.index_select(x, dim, pos.to(x.device)).contiguous()
'''),
         (Span("    world_size = len(shards)\n", "    return joined.index_select(dim, inverse)\n"), '''\
    dim = dim if dim >= 0 else dim + shards[0].dim()
    full_len = sum(s.size(dim) for s in shards)
    order = _layout(full_len, len(shards), scheme).reshape(-1).to(shards[0].device)
    out = torch.empty_like(torch.cat(shards, dim))
    out.index_copy_(dim, order, torch.cat(shards, dim))
    return out
'''),
         (Span("    world_size = dist.get_world_size(group)\n", "    return sequence_unshard(parts, dim=dim, scheme=scheme)\n"), '''\
    p = dist.get_world_size(group)
    dim = dim if dim >= 0 else dim + x_local.dim()
    moved = x_local.movedim(dim, 0).contiguous()
    out = torch.empty((p * moved.shape[0],) + tuple(moved.shape[1:]), dtype=moved.dtype, device=moved.device)
    dist.all_gather_into_tensor(out, moved, group=group)
    return sequence_unshard(list(out.movedim(0, dim).chunk(p, dim=dim)), dim=dim, scheme=scheme)
''')],
    ),
    Variant(
        "ex1_bug_zigzag_chunk_order", EX1,
        "zigzag puts the late chunk first on every rank (chunk 2P-1-r, then chunk r)",
        [("        return torch.cat([torch.arange(rank * c, (rank + 1) * c), torch.arange(late * c, (late + 1) * c)])\n",
          "        return torch.cat([torch.arange(late * c, (late + 1) * c), torch.arange(rank * c, (rank + 1) * c)])\n")],
        Fails("positions_zigzag", Kind.MISMATCH, "the same tokens in another order"),
    ),
    Variant(
        "ex1_bug_unshard_rank_order", EX1,
        "sequence_unshard concatenates the shards in rank order: right for contiguous only",
        [("    return joined.index_select(dim, inverse)\n", "    return joined\n")],
        Fails("unshard_zigzag", Kind.MISMATCH, "sequence_unshard(shards) differs"),
    ),
    Variant(
        "ex1_bug_shard_is_view", EX1,
        "sequence_shard returns a strided view of x (narrow) for contiguous instead of a copy",
        [("    return x.index_select(dim, index)  # index_select copies",
          "    if scheme == \"contiguous\":\n"
          "        return x.narrow(dim, int(index[0]), index.numel())\n"
          "    return x.index_select(dim, index)  # index_select copies")],
        Fails("shard_contiguous", Kind.CONTRACT, "shares x's memory"),
    ),
    Variant(
        "ex1_bug_no_validation", EX1,
        "seq_len never validated: an indivisible one fails in torch's view (RuntimeError), not with a ValueError naming seq_len",
        [("    if seq_len < 0 or seq_len % chunks:\n"
          "        raise ValueError(f\"seq_len {seq_len} must be divisible by {chunks} for scheme {scheme!r}\")\n", ""),
         ("        n = seq_len // world_size\n"
          "        return torch.arange(rank * n, (rank + 1) * n)\n",
          "        return torch.arange(seq_len).view(world_size, -1)[rank]\n")],
        Fails("errors", Kind.CONTRACT, "shard_positions(seq_len=10, rank=0, world_size=4) raised RuntimeError"),
    ),
    Variant(
        "ex1_bug_gather_ignores_group", EX1,
        "gather_sequence asks the default group for P, so a subgroup gathers the wrong count",
        [("    world_size = dist.get_world_size(group)\n", "    world_size = dist.get_world_size()\n")],
        Fails("gather_subgroup_striped", Kind.EXCEPTION, "rank"),
    ),
    Variant(
        "ex1_bug_gather_default_group", EX1,
        "gather_sequence all-gathers without group=: on a subgroup the collective runs over every rank",
        [("    dist.all_gather(parts, x_local, group=group)\n", "    dist.all_gather(parts, x_local)\n")],
        Fails("gather_subgroup_striped", Kind.EXCEPTION, "rank"),
    ),
    # ---- ex2: blockwise attention and the LSE merge
    Variant(
        "ex2_correct_logaddexp_merge", EX2,
        "lse by torch.logsumexp, softmax by torch.softmax with empty rows zeroed; merge by torch.logaddexp and sigmoid weights",
        [(Span("    cdt = torch.float64 if q.dtype", "    return out.to(q.dtype), lse\n"), '''\
    cdt = torch.float64 if q.dtype == torch.float64 else torch.float32
    scores = torch.matmul(q.to(cdt), k.to(cdt).transpose(-1, -2)) * scale  # (B, H, Sq, Sk)
    if causal:
        visible = k_pos.to(q.device).view(1, -1) <= q_pos.to(q.device).view(-1, 1)
        scores = torch.where(visible, scores, torch.full_like(scores, float("-inf")))
    lse = torch.logsumexp(scores, dim=-1)  # (B, H, Sq), -inf for an empty row
    empty = torch.isneginf(lse)[..., None]
    # An empty row becomes a row of zeros (uniform softmax, finite), then its weights are zeroed.
    probs = torch.softmax(torch.where(empty, torch.zeros_like(scores), scores), dim=-1)
    probs = torch.where(empty, torch.zeros_like(probs), probs)
    out = torch.matmul(probs, v.to(cdt))
    return out.to(q.dtype), lse
'''),
         (Span("    cdt = lse_a.dtype\n", "    return out.to(out_a.dtype), lse\n"), '''\
    lse_b = lse_b.to(lse_a.dtype)
    lse = torch.logaddexp(lse_a, lse_b)
    both_empty = torch.isneginf(lse)
    # e^lse_a / (e^lse_a + e^lse_b) = sigmoid(lse_a - lse_b); -inf - (-inf) only where both are empty.
    diff = torch.where(both_empty, torch.zeros_like(lse), lse_a - lse_b)
    zero = torch.zeros_like(lse)
    w_a = torch.where(both_empty, zero, torch.sigmoid(diff))[..., None]
    w_b = torch.where(both_empty, zero, torch.sigmoid(-diff))[..., None]
    out = w_a * out_a.to(lse.dtype) + w_b * out_b.to(lse.dtype)
    return out.to(out_a.dtype), lse
''')],
    ),
    Variant(
        "ex2_bug_local_index_mask", EX2,
        "causal mask compares local indices (k_idx <= q_idx), ignoring q_pos and k_pos",
        [("        hidden = k_pos.to(q.device)[None, :] > q_pos.to(q.device)[:, None]  # (Sq, Sk)\n",
          "        q_idx = torch.arange(q.shape[2], device=q.device)\n"
          "        k_idx = torch.arange(k.shape[2], device=q.device)\n"
          "        hidden = ~(k_idx[None, :] <= q_idx[:, None])  # (Sq, Sk)\n")],
        Fails("attention", Kind.MISMATCH, "Mask by global positions"),
    ),
    Variant(
        "ex2_bug_merge_no_max", EX2,
        "merge exponentiates lse without subtracting the max: e^lse overflows to inf for large scores",
        [("    m = torch.where(torch.isinf(m), torch.zeros_like(m), m)  # both sides empty\n",
          "    m = torch.zeros_like(m)  # no shift: w = e^lse itself\n")],
        Fails("merge_large_lse", Kind.NAN_INF, "subtracted first"),
    ),
    Variant(
        "ex2_bug_nan_masked_rows", EX2,
        "torch.softmax over a row the mask hides completely: out is NaN (0/0) instead of 0",
        [("    out = (weights / denom) @ v.to(cdt)", "    out = torch.softmax(scores, dim=-1) @ v.to(cdt)")],
        Fails("attention_empty_rows", Kind.NAN_INF, "sees no key must give out = 0"),
    ),
    Variant(
        "ex2_bug_strict_mask", EX2,
        "the causal mask hides the query's own key (k_pos >= q_pos hidden): wrong on every diagonal block",
        [("        hidden = k_pos.to(q.device)[None, :] > q_pos.to(q.device)[:, None]  # (Sq, Sk)\n",
          "        hidden = k_pos.to(q.device)[None, :] >= q_pos.to(q.device)[:, None]  # (Sq, Sk)\n")],
        Fails("attention_self_block", Kind.MISMATCH, "its own key"),
    ),
    Variant(
        "ex2_bug_out_not_cast", EX2,
        "out stays in the float32 compute dtype instead of going back to q's dtype",
        [("    return out.to(q.dtype), lse\n", "    return out, lse\n")],
        Fails("attention_low_precision", Kind.WRONG_DTYPE, "expected bfloat16"),
    ),
    Variant(
        "ex2_bug_merge_no_rescale", EX2,
        "the merge weights each side by e^(lse_x - m) but never divides by their sum",
        [("    out = (w_a / total)[..., None] * out_a.to(cdt) + (w_b / total)[..., None] * out_b.to(cdt)\n",
          "    out = w_a[..., None] * out_a.to(cdt) + w_b[..., None] * out_b.to(cdt)\n")],
        Fails("merge", Kind.MISMATCH, "without dividing by their sum"),
    ),
    Variant(
        "ex2_bug_scores_bf16", EX2,
        "float32 scores taken from q and k rounded to bfloat16 (a fast matmul): a precision loss at large scores",
        [("    scores = (q.to(cdt) @ k.to(cdt).transpose(-2, -1)) * scale  # (B, H, Sq, Sk)\n",
          "    low = torch.bfloat16 if q.dtype == torch.float32 else cdt  # a faster matmul\n"
          "    scores = (q.to(low) @ k.to(low).transpose(-2, -1)).to(cdt) * scale  # (B, H, Sq, Sk)\n")],
        Fails("attention_large_scores", Kind.MISMATCH, "a precision loss, not an overflow"),
    ),
    # ---- ex3: all-gather K/V attention
    Variant(
        "ex3_correct_allgather_list_reorder", EX3,
        "all_gather into a list, K/V reordered into sequence order and masked with arange(S); backward by dist.reduce_scatter of a list",
        [(Span("        batch, heads, shard_len, head_dim = x.shape\n", "world_size * shard_len, head_dim)\n"),
          "        parts = [torch.empty_like(x) for _ in range(world_size)]\n"
          "        dist.all_gather(parts, x.contiguous(), group=group)\n"
          "        return torch.cat(parts, dim=2)  # rank order\n"),
         (Span("        batch, heads, seq_len, head_dim = grad.shape\n", "group=ctx.group)\n"),
          "        chunks = [c.contiguous() for c in grad.chunk(world_size, dim=2)]\n"
          "        grad_x = torch.empty_like(chunks[0])\n"
          "        dist.reduce_scatter(grad_x, chunks, op=dist.ReduceOp.SUM, group=ctx.group)\n"),
         (Span("    q_pos = shard_positions(seq_len, rank, world_size, scheme).to(q.device)  # (S/P,)\n",
               "    out, _ = attention_with_lse(q, k_all, v_all, q_pos, k_pos, causal=True)\n"), '''\
    q_pos = shard_positions(seq_len, rank, world_size, scheme)
    order = torch.cat([shard_positions(seq_len, r, world_size, scheme) for r in range(world_size)])
    to_sequence = torch.argsort(order).to(q.device)  # gathered slot of each global position
    k_seq = GatherTokens.apply(k, group).index_select(2, to_sequence)  # (B, H, S, D), sequence order
    v_seq = GatherTokens.apply(v, group).index_select(2, to_sequence)
    k_pos = torch.arange(seq_len, device=q.device)
    out, _ = attention_with_lse(q, k_seq, v_seq, q_pos.to(q.device), k_pos)
''')],
    ),
    Variant(
        "ex3_bug_local_positions_mask", EX3,
        "causal mask uses local positions: arange(S/P) for the queries, arange(S) for the gathered keys",
        [("    q_pos = shard_positions(seq_len, rank, world_size, scheme).to(q.device)  # (S/P,)\n"
          "    k_pos = torch.cat([shard_positions(seq_len, r, world_size, scheme) for r in range(world_size)]).to(q.device)  # (S,)\n",
          "    shard_positions(seq_len, rank, world_size, scheme)  # validation only\n"
          "    q_pos = torch.arange(q.shape[2], device=q.device)  # (S/P,)\n"
          "    k_pos = torch.arange(seq_len, device=q.device)  # (S,)\n")],
        Fails("forward_contiguous", Kind.MISMATCH, "what local positions give"),
    ),
    Variant(
        "ex3_bug_contiguous_positions", EX3,
        "positions hard-coded for contiguous sharding (rank * S/P + i, arange(S) for the gathered keys), whatever the scheme",
        [("    q_pos = shard_positions(seq_len, rank, world_size, scheme).to(q.device)  # (S/P,)\n"
          "    k_pos = torch.cat([shard_positions(seq_len, r, world_size, scheme) for r in range(world_size)]).to(q.device)  # (S,)\n",
          "    shard_positions(seq_len, rank, world_size, scheme)  # validation only\n"
          "    q_pos = torch.arange(rank * q.shape[2], (rank + 1) * q.shape[2], device=q.device)  # (S/P,)\n"
          "    k_pos = torch.arange(seq_len, device=q.device)  # (S,)\n")],
        Fails("forward_zigzag", Kind.MISMATCH, "(contiguous sharding) give"),
    ),
    Variant(
        "ex3_bug_backward_no_reduce_scatter", EX3,
        "GatherTokens.backward keeps this rank's slice of its own gradient: no reduce-scatter over the ranks",
        [("        per_rank = grad.reshape(batch, heads, world_size, shard_len, head_dim).permute(2, 0, 1, 3, 4)\n"
          "        per_rank = per_rank.reshape(world_size * batch, heads, shard_len, head_dim)  # a contiguous copy\n"
          "        grad_x = torch.empty((batch, heads, shard_len, head_dim), dtype=grad.dtype, device=grad.device)\n"
          "        _reduce_scatter_flat(grad_x, per_rank, op=dist.ReduceOp.SUM, group=ctx.group)\n",
          "        rank = dist.get_rank(ctx.group)\n"
          "        grad_x = grad[:, :, rank * shard_len:(rank + 1) * shard_len].contiguous()\n")],
        Fails("backward_zigzag", Kind.MISMATCH, "reduce-scatter"),
    ),
    Variant(
        "ex3_bug_backward_returns_none", EX3,
        "GatherTokens.backward returns None for its input: k and v get no gradient at all",
        [("        return grad_x, None\n", "        return None, None\n")],
        Fails("backward_zigzag", Kind.WRONG_TYPE, "k.grad should be a tensor, got None"),
    ),
    Variant(
        "ex3_bug_gather_default_group", EX3,
        "K/V all-gathered without group=: on a subgroup the collective runs over every rank",
        [("        _all_gather_flat(gathered, x.contiguous(), group=group)\n",
          "        _all_gather_flat(gathered, x.contiguous())\n")],
        Fails("forward_subgroup_striped", Kind.EXCEPTION, "rank"),
    ),
    Variant(
        "ex3_bug_upcast_not_cast_back", EX3,
        "low-precision inputs upcast to float32 for the attention, and the output returned in float32",
        [("    out, _ = attention_with_lse(q, k_all, v_all, q_pos, k_pos, causal=True)\n",
          "    if q.dtype in (torch.bfloat16, torch.float16):  # attend in float32\n"
          "        q, k_all, v_all = q.float(), k_all.float(), v_all.float()\n"
          "    out, _ = attention_with_lse(q, k_all, v_all, q_pos, k_pos, causal=True)\n")],
        Fails("forward_low_precision", Kind.WRONG_DTYPE, "expected bfloat16"),
    ),
    Variant(
        "ex3_bug_unknown_scheme_silent", EX3,
        "an unknown scheme falls back to contiguous instead of raising ValueError naming scheme",
        [("    rank, world_size = dist.get_rank(group), dist.get_world_size(group)\n    seq_len",
          "    scheme = scheme if scheme in (\"zigzag\", \"striped\") else \"contiguous\"\n"
          "    rank, world_size = dist.get_rank(group), dist.get_world_size(group)\n    seq_len")],
        Fails("errors", Kind.CONTRACT, "returned normally"),
    ),
    # ---- ex4: Ulysses all-to-all
    Variant(
        "ex4_correct_permute_reorder", EX4,
        "one autograd.Function per direction, reshape/permute around all_to_all_single; attention in sequence order after an index_select",
        [(Span("class AllToAll(torch.autograd.Function):\n", "None, None, None\n        ### END SOLUTION\n"), '''\
def _s2h(x, group):
    world_size = dist.get_world_size(group)
    b, h, s, d = x.shape
    send = x.reshape(b, world_size, h // world_size, s, d).permute(1, 0, 2, 3, 4).contiguous()
    recv = torch.empty_like(send)  # (P, B, H/P, S/P, D): row i = rank i's tokens
    dist.all_to_all_single(recv, send, group=group)
    return recv.permute(1, 2, 0, 3, 4).reshape(b, h // world_size, world_size * s, d)


def _h2s(x, group):
    world_size = dist.get_world_size(group)
    b, hp, s, d = x.shape
    send = x.reshape(b, hp, world_size, s // world_size, d).permute(2, 0, 1, 3, 4).contiguous()
    recv = torch.empty_like(send)  # (P, B, H/P, S/P, D): row i = rank i's heads
    dist.all_to_all_single(recv, send, group=group)
    return recv.permute(1, 0, 2, 3, 4).reshape(b, world_size * hp, s // world_size, d)


class _SeqToHead(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return _s2h(x, group)

    @staticmethod
    def backward(ctx, grad):
        return _h2s(grad.contiguous(), ctx.group), None


class _HeadToSeq(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return _h2s(x, group)

    @staticmethod
    def backward(ctx, grad):
        return _s2h(grad.contiguous(), ctx.group), None
'''),
         ("    return AllToAll.apply(x, 1, 2, group)\n", "    return _SeqToHead.apply(x, group)\n"),
         ("    return AllToAll.apply(x, 2, 1, group)\n", "    return _HeadToSeq.apply(x, group)\n"),
         (Span("    pos = torch.cat(", "    return head_to_seq(out_h, group)  # (B, H, S/P, D)\n"), '''\
    order = torch.cat([shard_positions(seq_len, r, world_size, scheme) for r in range(world_size)]).to(q.device)
    to_sequence = torch.argsort(order)
    q_s, k_s, v_s = (seq_to_head(t, group).index_select(2, to_sequence) for t in (q, k, v))
    pos = torch.arange(seq_len, device=q.device)
    out_s, _ = attention_with_lse(q_s, k_s, v_s, pos, pos)
    out_h = out_s.index_select(2, order)  # back to rank order
    return head_to_seq(out_h, group)
''')],
    ),
    Variant(
        "ex4_bug_all_to_all_wrong_dim", EX4,
        "the all-to-all cuts the flat (batch-major) memory into P pieces instead of cutting the scattered axis",
        [("        send = torch.stack(x.chunk(world_size, dim=scatter_dim))  # (P, *chunk shape)\n",
          "        chunk_shape = list(x.shape)\n"
          "        chunk_shape[scatter_dim] //= world_size\n"
          "        send = x.contiguous().view(world_size, -1)  # pieces of memory, not of scatter_dim\n"),
         ("        return torch.cat(recv.unbind(0), dim=gather_dim)\n",
          "        return torch.cat([row.view(chunk_shape) for row in recv.unbind(0)], dim=gather_dim)\n")],
        Fails("seq_to_head_zigzag", Kind.MISMATCH, "move the head axis there first"),
    ),
    Variant(
        "ex4_bug_no_heads_check", EX4,
        "no ValueError when H % P != 0: the all-to-all goes ahead with uneven head chunks",
        [("    if x.shape[1] % world_size:\n"
          "        raise ValueError(f\"heads: H = {x.shape[1]} is not divisible by the group size P = {world_size}\")\n", ""),
         ("    if q.shape[1] % world_size:\n"
          "        raise ValueError(f\"heads: H = {q.shape[1]} is not divisible by the group size P = {world_size}\")\n", "")],
        Fails("heads_error", Kind.CONTRACT, "must raise ValueError naming 'heads'"),
    ),
    Variant(
        "ex4_bug_all_to_all_default_group", EX4,
        "all_to_all_single without group=: on a subgroup the exchange runs over every rank",
        [("        dist.all_to_all_single(recv, send, group=group)\n", "        dist.all_to_all_single(recv, send)\n")],
        Fails("forward_subgroup_zigzag", Kind.TIMEOUT, "waits in all_to_all_single()"),
    ),
    # ---- ex5: ring attention
    Variant(
        "ex5_correct_separate_kv_hidden_blocks_only", EX5,
        "K and V travel as separate messages, received before each block is computed (no overlap), and only "
        "fully hidden blocks are skipped, as the contract asks: under zigzag and striped no block is fully "
        "hidden, so every one is computed whole (its visible rectangle is recommended, not graded)",
        [("def ring_forward(", '''\
def _exchange(send, recv, group):
    rank, world_size = dist.get_rank(group), dist.get_world_size(group)
    dst, src = (rank + 1) % world_size, (rank - 1) % world_size
    if group is not None:
        dst, src = dist.get_global_rank(group, dst), dist.get_global_rank(group, src)
    ops = []
    for s, r in zip(send, recv):
        ops.append(dist.P2POp(dist.isend, s, dst, group))
        ops.append(dist.P2POp(dist.irecv, r, src, group))
    for work in dist.batch_isend_irecv(ops):
        work.wait()


def _hidden(q_pos, k_pos):
    return bool(k_pos.min() > q_pos.max())


def _block_grads(q, k, v, dout, lse, delta, q_pos, k_pos, scale):
    s = (q @ k.transpose(-2, -1)) * scale
    s = s.masked_fill(k_pos.view(1, -1) > q_pos.view(-1, 1), float("-inf"))
    p = torch.exp(s - lse.unsqueeze(-1))
    dp = dout @ v.transpose(-2, -1)
    ds = p * (dp - delta.unsqueeze(-1))
    return ds @ k * scale, ds.transpose(-2, -1) @ q * scale, p.transpose(-2, -1) @ dout


def ring_forward('''),
         (Span("    q_pos = shard_positions(seq_len, rank, world_size, scheme)  # (S/P,) CPU, validates scheme\n",
               "    return out.to(q.dtype), lse\n"), '''\
    q_pos = shard_positions(seq_len, rank, world_size, scheme)
    wide = q.to(torch.float64 if q.dtype == torch.float64 else torch.float32)
    out, lse = attention_with_lse(wide, k, v, q_pos.to(q.device), q_pos.to(q.device))
    k_cur, v_cur = k.contiguous(), v.contiguous()
    for step in range(1, world_size):
        k_nxt, v_nxt = torch.empty_like(k_cur), torch.empty_like(v_cur)
        _exchange([k_cur, v_cur], [k_nxt, v_nxt], group)
        k_cur, v_cur = k_nxt, v_nxt
        k_pos = shard_positions(seq_len, (rank - step) % world_size, world_size, scheme)
        if _hidden(q_pos, k_pos):
            continue
        blk_out, blk_lse = attention_with_lse(wide, k_cur, v_cur, q_pos.to(q.device), k_pos.to(q.device))
        out, lse = merge_attention(out, lse, blk_out, blk_lse)
    return out.to(q.dtype), lse
'''),
         (Span("        q, k, v, out, lse = ctx.saved_tensors\n", "        return dq, dk, dv, None, None\n"), '''\
        q, k, v, out, lse = ctx.saved_tensors
        group, scheme = ctx.group, ctx.scheme
        rank, world_size = dist.get_rank(group), dist.get_world_size(group)
        seq_len = q.shape[2] * world_size
        scale = 1.0 / math.sqrt(q.shape[-1])
        wd = lse.dtype
        qw, dw = q.to(wd), dout.to(wd)
        delta = (dw * out.to(wd)).sum(-1)
        q_pos = shard_positions(seq_len, rank, world_size, scheme).to(q.device)
        dq = torch.zeros_like(qw)
        k_cur, v_cur = k.contiguous(), v.contiguous()
        dk_cur, dv_cur = torch.zeros_like(qw), torch.zeros_like(qw)  # shares for the block held
        for step in range(world_size):
            k_pos = shard_positions(seq_len, (rank - step) % world_size, world_size, scheme).to(q.device)
            if not _hidden(q_pos.cpu(), k_pos.cpu()):
                gq, gk, gv = _block_grads(qw, k_cur.to(wd), v_cur.to(wd), dw, lse, delta, q_pos, k_pos, scale)
                dq += gq
                dk_cur = dk_cur + gk
                dv_cur = dv_cur + gv
            if world_size == 1:
                break
            last = step == world_size - 1
            send = [dk_cur, dv_cur] + ([] if last else [k_cur, v_cur])
            recv = [torch.empty_like(t) for t in send]
            _exchange(send, recv, group)
            dk_cur, dv_cur = recv[0], recv[1]
            if not last:
                k_cur, v_cur = recv[2], recv[3]
        return dq.to(q.dtype), dk_cur.to(k.dtype), dv_cur.to(v.dtype), None, None
''')],
    ),
    Variant(
        "ex5_bug_blocking_send_recv", EX5,
        "a blocking ring: dist.send to the next rank, then dist.recv from the previous one: every rank waits in send",
        [("    return dist.batch_isend_irecv([\n"
          "        dist.P2POp(dist.isend, send_buf, send_to, group),\n"
          "        dist.P2POp(dist.irecv, recv_buf, recv_from, group),\n"
          "    ])\n",
          "    dist.send(send_buf, send_to, group=group)\n"
          "    dist.recv(recv_buf, recv_from, group=group)\n"
          "    return []\n")],
        Fails("forward_contiguous", Kind.TIMEOUT, "rank 0 waits in send(dst=1), call #1"),
    ),
    Variant(
        "ex5_bug_fake_ring_allgather", EX5,
        "a fake ring: K and V all-gathered up front, then the blocks attended one by one from the gathered copy",
        [("    cur = torch.stack((k, v))  # (2, B, H, S/P, D): K and V travel as one message\n"
          "    nxt = torch.empty_like(cur)\n",
          "    kv = torch.stack((k, v))  # (2, B, H, S/P, D)\n"
          "    blocks = [torch.empty_like(kv) for _ in range(world_size)]\n"
          "    dist.all_gather(blocks, kv, group=group)\n"),
         ("        works = [] if last else ring_exchange(cur, nxt, group)  # in flight while we compute\n",
          "        cur = blocks[(rank - step) % world_size]\n"),
         ("        if not last:\n"
          "            for work in works:\n"
          "                work.wait()\n"
          "            cur, nxt = nxt, cur  # the block just sent is no longer needed: its buffer receives next\n", "")],
        Fails("comm", Kind.COMMUNICATION, "calls all_gather on large tensors"),
    ),
    Variant(
        "ex5_bug_group_rank_peers", EX5,
        "point-to-point peers are group ranks ((r +- 1) % P) passed where torch.distributed expects global ranks",
        [("    if group is not None:\n"
          "        send_to, recv_from = dist.get_global_rank(group, send_to), dist.get_global_rank(group, recv_from)\n", "")],
        Fails("comm_subgroup_zigzag", Kind.EXCEPTION, "is not part of group"),
    ),
    Variant(
        "ex5_bug_keeps_all_blocks", EX5,
        "every received K/V block is kept (a fresh receive buffer per step) and attended after the ring is done: memory grows with P",
        [("    cur = torch.stack((k, v))  # (2, B, H, S/P, D): K and V travel as one message\n"
          "    nxt = torch.empty_like(cur)\n",
          "    received = [torch.stack((k, v))]  # (2, B, H, S/P, D)\n"
          "    for step in range(1, world_size):\n"
          "        nxt = torch.empty_like(received[-1])\n"
          "        for work in ring_exchange(received[-1], nxt, group):\n"
          "            work.wait()\n"
          "        received.append(nxt)\n"),
         ("    for step in range(world_size):\n"
          "        last = step == world_size - 1\n"
          "        works = [] if last else ring_exchange(cur, nxt, group)  # in flight while we compute\n",
          "    for step, cur in enumerate(received):\n"),
         ("        if not last:\n"
          "            for work in works:\n"
          "                work.wait()\n"
          "            cur, nxt = nxt, cur  # the block just sent is no longer needed: its buffer receives next\n", "")],
        Fails("memory", Kind.MEMORY, "must not grow with P"),
    ),
    Variant(
        "ex5_bug_no_skip", EX5,
        "every block is computed whole, also the blocks the causal mask hides completely",
        [("        q_start, k_stop = visible_block(q_pos, k_pos)\n        if k_stop > 0:  # else",
          "        q_start, k_stop = 0, k_pos.numel()  # the whole block, visible or not\n        if k_stop > 0:  # else")],
        Fails("compute_contiguous", Kind.COMPUTE, "rank 0 computes 4.00 blocks"),
    ),
    Variant(
        "ex5_correct_whole_blocks_off_contiguous", EX5,
        "the visible rectangle under contiguous sharding only: under zigzag and striped every block is "
        "computed whole, where each rank sees half of every block but its own (recommended, not graded)",
        [("        q_start, k_stop = visible_block(q_pos, k_pos)\n        if k_stop > 0:  # else",
          "        q_start, k_stop = visible_block(q_pos, k_pos) if scheme == \"contiguous\" else (0, k_pos.numel())\n"
          "        if k_stop > 0:  # else")],
    ),
    Variant(
        "ex5_bug_recomputes_blocks", EX5,
        "every visible block's attention computed twice (a check left in, its result thrown away): more work "
        "than the rank's queries against every key",
        [("            blk_out, blk_lse = attention_with_lse(\n",
          "            attention_with_lse(q_c[:, :, q_start:], cur[0, :, :, :k_stop], cur[1, :, :, :k_stop],\n"
          "                               q_pos_dev[q_start:], k_pos[:k_stop].to(q.device))  # a check\n"
          "            blk_out, blk_lse = attention_with_lse(\n")],
        Fails("compute_zigzag", Kind.COMPUTE, "more than its P = 4 blocks whole"),
    ),
    Variant(
        "ex5_bug_overwrite_no_merge", EX5,
        "each block's result overwrites the accumulated rows instead of being merged: the last visible block wins",
        [("            out_rows, lse_rows = merge_attention(out[:, :, q_start:], lse[:, :, q_start:], blk_out, blk_lse)\n",
          "            out_rows, lse_rows = blk_out, blk_lse\n")],
        Fails("forward_contiguous", Kind.MISMATCH, REMOTE_KEYS),
    ),
    Variant(
        "ex5_bug_reversed_ring_owner", EX5,
        "the ring runs backwards (send to r-1, receive from r+1) while the held block's owner is still (r - t) mod P",
        [("    send_to, recv_from = (rank + 1) % world_size, (rank - 1) % world_size\n",
          "    send_to, recv_from = (rank - 1) % world_size, (rank + 1) % world_size\n")],
        Fails("comm", Kind.COMMUNICATION, "ring runs the other way"),
    ),
    Variant(
        "ex5_bug_out_not_cast", EX5,
        "the ring's output stays in the float32 accumulator instead of going back to q's dtype",
        [("    return out.to(q.dtype), lse\n    ### END SOLUTION\n", "    return out, lse\n    ### END SOLUTION\n")],
        Fails("forward_low_precision", Kind.WRONG_DTYPE, "expected bfloat16"),
    ),
    Variant(
        "ex5_correct_forward_only", EX5,
        "no bonus: ring_forward's output returned as it is, still requiring grad through its local ops (not detached)",
        [("    return RingAttention.apply(q, k, v, scheme, group)\n", "    return ring_forward(q, k, v, scheme, group)[0]\n")],
        bonus=False,
    ),
    # ---- ex6: labels and the sharded loss
    Variant(
        "ex6_correct_neighbour_exchange", EX6,
        "labels by a point-to-point exchange with the ring neighbours instead of gathering all token ids",
        [("def shift_labels(", '''\
def _exchange(send, to_rank, from_rank, group):
    """Send `send` to group rank to_rank; return the tensor of the same shape received from from_rank."""
    world = group if group is not None else dist.group.WORLD
    recv = torch.empty_like(send)
    ops = [dist.P2POp(dist.isend, send.contiguous(), dist.get_global_rank(world, to_rank), group),
           dist.P2POp(dist.irecv, recv, dist.get_global_rank(world, from_rank), group)]
    for request in dist.batch_isend_irecv(ops):
        request.wait()
    return recv


def shift_labels('''),
         (Span("    full = gather_sequence(", "    return full[:, positions + 1].to(torch.int64)  # (B, S/P)\n"), '''\
    prev, next_ = (rank - 1) % world_size, (rank + 1) % world_size
    ignore = tokens.new_full((tokens.shape[0], 1), ignore_index)  # (B, 1)
    if scheme == "contiguous":
        # The token after this shard opens the next rank's; the last rank's is past the end
        after = ignore
        if world_size > 1:
            from_next = _exchange(tokens[:, :1], prev, next_, group)  # every rank sends, so none waits alone
            if rank < world_size - 1:
                after = from_next
        labels = torch.cat([tokens[:, 1:], after], dim=1)
    elif scheme == "zigzag":
        if tokens.shape[1] % 2:
            raise ValueError(f"seq_len: zigzag needs an even local length, got {tokens.shape[1]}")
        half = tokens.shape[1] // 2
        front, back = tokens[:, :half], tokens[:, half:]  # chunks r and 2P-1-r
        # Chunk r + 1 opens rank r + 1's front; chunk P-1 is followed by chunk P, this rank's own back
        after_front = back[:, :1]
        # Chunk 2P - r opens rank r - 1's back; chunk 2P-1 (rank 0's back) ends the sequence
        after_back = ignore
        if world_size > 1:
            from_next = _exchange(front[:, :1], prev, next_, group)
            from_prev = _exchange(back[:, :1], next_, prev, group)
            if rank < world_size - 1:
                after_front = from_next
            if rank > 0:
                after_back = from_prev
        labels = torch.cat([front[:, 1:], after_front, back[:, 1:], after_back], dim=1)
    elif scheme == "striped":
        # Position r + iP is followed by r + 1 + iP: the next rank's i-th token, or rank 0's (i+1)-th
        following = _exchange(tokens, prev, next_, group) if world_size > 1 else tokens
        labels = following if rank < world_size - 1 else torch.cat([following[:, 1:], ignore], dim=1)
    else:
        raise ValueError(f"scheme must be 'contiguous', 'zigzag' or 'striped', got {scheme!r}")
    return labels.to(torch.int64)
''')],
    ),
    Variant(
        "ex6_bug_local_shift", EX6,
        "labels shifted inside each shard: every shard's last position loses its label, or takes one from the wrong chunk",
        [(Span("    rank, world_size = dist.get_rank(group)", "    return full[:, positions + 1].to(torch.int64)  # (B, S/P)\n"),
          "    ignore = tokens.new_full((tokens.shape[0], 1), ignore_index)\n"
          "    return torch.cat([tokens[:, 1:], ignore], dim=1).to(torch.int64)  # local order, not sequence order\n")],
        Fails("labels_contiguous", Kind.MISMATCH, "labels differ only at shard boundaries"),
    ),
    Variant(
        "ex6_bug_rank_order_shift", EX6,
        "labels shifted in the shards concatenated in rank order, not in sequence order: right for contiguous only",
        [("    full = gather_sequence(tokens, dim=1, scheme=scheme, group=group)  # (B, S)\n",
          "    full = gather_sequence(tokens, dim=1, group=group)  # (B, S) in rank order\n"),
         ("    positions = shard_positions(seq_len, rank, world_size, scheme)",
          "    positions = shard_positions(seq_len, rank, world_size)")],
        Fails("labels_zigzag", Kind.MISMATCH, "concatenated in rank order"),
    ),
    Variant(
        "ex6_bug_mean_of_means", EX6,
        "the mean of per-rank mean losses: wrong whenever ranks hold different numbers of valid labels",
        [("    totals = torch.stack([local_sum.detach().double(), local_count.double()])  # (2,)\n",
          "    local_mean = local_sum / local_count.clamp(min=1)\n"
          "    totals = torch.stack([local_mean.detach().double(), (local_count > 0).double()])  # ranks, not tokens\n"),
         ("    local_share = local_sum / global_count", "    local_share = local_mean / global_count")],
        Fails("loss_uneven", Kind.MISMATCH, "mean of per-rank means"),
    ),
    Variant(
        "ex6_bug_autograd_allreduce", EX6,
        "the loss all-reduced through autograd, so backward all-reduces the gradient too: P times too large",
        [("def sharded_cross_entropy(", '''\
class _AllReduceSum(torch.autograd.Function):
    """A differentiable all-reduce: sums forward, and sums the gradients backward."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        x = x.clone()
        dist.all_reduce(x, group=group)
        return x

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


def sharded_cross_entropy('''),
         ("    loss = global_sum / global_count + (local_share - local_share.detach())\n",
          "    loss = _AllReduceSum.apply(local_share, group)\n")],
        Fails("loss_contiguous", Kind.MISMATCH, "the gradients are P times the reference"),
    ),
    Variant(
        "ex6_bug_nan_empty_rank", EX6,
        "local mean times local count: a rank whose labels are all ignore_index gives 0/0 = NaN, and the all-reduce spreads it",
        [("ignore_index=ignore_index, reduction=\"sum\")  # (): 0 if all ignored, not NaN\n",
          "ignore_index=ignore_index) * (labels != ignore_index).sum()  # mean * count\n")],
        Fails("loss_empty_rank", Kind.NAN_INF, "holds no valid label (all ignore_index)"),
    ),
    Variant(
        "ex6_bug_global_rank", EX6,
        "shift_labels takes this rank's position from dist.get_rank() (global), not the rank in group",
        [("    rank, world_size = dist.get_rank(group), dist.get_world_size(group)\n",
          "    rank, world_size = dist.get_rank(), dist.get_world_size(group)\n")],
        Fails("labels_subgroup_striped", Kind.EXCEPTION, "rank"),
    ),
    Variant(
        "ex6_bug_loss_dtype", EX6,
        "the loss returned in its float32 accumulator's dtype, not in the logits' dtype",
        [("    return loss.to(logits.dtype)\n", "    return loss  # float32 for bfloat16 logits\n")],
        Fails("loss_low_precision", Kind.WRONG_DTYPE, "expected bfloat16"),
    ),
    # ---- ex7: the context-parallel training step
    Variant(
        "ex7_correct_per_parameter", EX7,
        "all-reduces parameter by parameter instead of in one flat buffer: slower (one collective each), as right",
        [("    grads = [p.grad for p in model.parameters() if p.grad is not None]\n"
          "    flat = torch.cat([g.reshape(-1) for g in grads])  # (sum of numels,)\n"
          "    dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)\n"
          "    for g, summed in zip(grads, flat.split([g.numel() for g in grads])):\n"
          "        g.copy_(summed.view_as(g))\n",
          "    for param in model.parameters():\n"
          "        if param.grad is not None:  # the same parameters on every rank, so no rank waits alone\n"
          "            dist.all_reduce(param.grad, op=dist.ReduceOp.SUM, group=group)\n")],
    ),
    Variant(
        "ex7_bug_attention_kind_ignored", EX7,
        "the attention name is checked but not used: every step runs ex3's all-gather KV, whose numbers are "
        "as right as Ulysses' or the ring's",
        [("    fn = ATTENTIONS[attention]\n", "    fn = ATTENTIONS[\"all_gather\"]\n")],
        Fails("ulysses_p2", Kind.COMMUNICATION, "did not run as ex4's Ulysses all-to-all"),
    ),
    Variant(
        "ex7_bug_local_positions", EX7,
        "rotary positions computed locally, arange(S/P): every rank embeds its tokens as the start of the sequence",
        [("    positions = shard_positions(seq_len, rank, world_size, scheme).to(tokens.device)",
          "    positions = torch.arange(tokens.shape[1], device=tokens.device)")],
        Fails("step_p2", Kind.MISMATCH, "local rotary positions"),
    ),
    Variant(
        "ex7_bug_no_grad_allreduce", EX7,
        "never all-reduces the parameter gradients: each rank keeps the gradient of its own share of the loss",
        [("    grads = [p.grad for p in model.parameters() if p.grad is not None]\n"
          "    flat = torch.cat([g.reshape(-1) for g in grads])  # (sum of numels,)\n"
          "    dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)\n"
          "    for g, summed in zip(grads, flat.split([g.numel() for g in grads])):\n"
          "        g.copy_(summed.view_as(g))\n", "")],
        Fails("step_p2", Kind.MISMATCH, "no all-reduce over the group"),
    ),
    Variant(
        "ex7_bug_grad_average", EX7,
        "parameter gradients averaged over the group: the loss already divides by the global token count, so P times too small",
        [("        g.copy_(summed.view_as(g))\n",
          "        g.copy_(summed.view_as(g) / world_size)  # DDP's average is for a per-rank mean loss, not this one\n")],
        Fails("step_p2", Kind.MISMATCH, "averaged over the group, so they are P times too small"),
    ),
    Variant(
        "ex7_bug_grad_allreduce_default_group", EX7,
        "the parameter gradients all-reduced without group=: on a subgroup the collective waits for every rank",
        [("    dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)\n",
          "    dist.all_reduce(flat, op=dist.ReduceOp.SUM)\n")],
        Fails("step_subgroup_zigzag", Kind.TIMEOUT, "waits in all_reduce()"),
    ),
    Variant(
        "ex7_bug_loss_float64", EX7,
        "the loss returned in float64, the reference's precision, not in the model's dtype: right for a float64 model only",
        [("    return loss.detach()\n", "    return loss.detach().double()  # as precise as the reference\n")],
        Fails("step_float32_striped", Kind.WRONG_DTYPE, "float32"),
    ),
]
