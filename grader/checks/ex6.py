"""Checks of exercise 6 (the loss across shards): shift_labels, sharded_cross_entropy, argument errors.

Every rank gets its shard of seeded token ids (labels) or of logits and labels
(loss), calls the student's function on its group, and sends back what came
out: the labels, or the loss and logits.grad after its own .backward(). The
grader compares with float64 single-device F.cross_entropy and, when a value
is wrong, recomputes what the usual bugs would have given (labels shifted
inside each shard, a mean of per-rank means, a gradient P times too large) to
name the one that matches.
"""

from __future__ import annotations

from typing import Any

import torch

from grader import reference
from grader.checks import (Check, Reads, generator, judge_value_errors, member_positions, per_member, randn,
                           register)
from grader.compare import Tolerance, check_tensor, tolerance
from grader.tasks import DTYPES
from grader.tasks.ex6 import BAD_LABELS
from grader.verdict import PASS, Kind, fail

SHIFT_HINT = ("The label at global position t is the token at t + 1, wherever that token lives: shift in "
              "sequence order (gather the token ids and index them with shard_positions(S, r, P, scheme) + 1, "
              "or exchange the boundary tokens with the neighbour that holds them), never in local order.")
MEAN_HINT = ("Single-device cross-entropy is sum over all valid tokens / count of all valid tokens. Sum the "
             "local losses (reduction='sum'), count the local valid labels, all-reduce both, then divide.")
EMPTY_HINT = ("rank {r} holds no valid label (all ignore_index): a local mean there is 0/0 = NaN, and the "
              "all-reduce spreads it to every rank. Sum the local losses (reduction='sum' gives 0 for no "
              "labels) and divide by the global count.")
AUTOGRAD_HINT = ("An all-reduce inside autograd (a differentiable collective, or a loss built from the "
                 "all-reduced value) also sums the gradients over the group in backward. All-reduce "
                 "detached numbers; take the gradient from local_sum / global_count.")



SHAPE = ("B", "S", "V")  # what _sizes reads


def _sizes(case: Any) -> tuple[int, int, int]:
    s = case.shape
    return s.get("B", 2), s["S"], s.get("V", 11)


def _ignore(case: Any) -> int:
    return case.params.get("ignore_index", -100)


def _tokens(case: Any) -> torch.Tensor:
    b, s, v = _sizes(case)
    return torch.randint(0, v, (b, s), generator=generator(case, salt=31))


def _labels(case: Any, tokens: torch.Tensor) -> torch.Tensor:
    """Next-token labels with `pad` padding tokens at the end of each row (an int, or one per row).

    A row of S tokens padded with n has n + 1 ignored labels: the pads', and the last real token's,
    whose next token is a pad. So ranks hold different numbers of valid labels, and with enough
    padding a rank holds none.
    """
    labels = reference.next_token_labels(tokens, _ignore(case))
    s = tokens.shape[1]
    pad = case.params.get("pad", 0)
    for b, n in enumerate(pad if isinstance(pad, list) else [pad] * tokens.shape[0]):
        if n:
            labels[b, s - n - 1:] = _ignore(case)
    return labels


def _shard(case: Any, x: torch.Tensor, i: int) -> torch.Tensor:
    return reference.shard(x, i, case.group_size, 1, case.scheme)


def _call_text(case: Any, function: str, args: str) -> str:
    extra = f", ignore_index={_ignore(case)}" if "ignore_index" in case.params else ""
    scheme = f", scheme={case.scheme!r}" if function == "shift_labels" else ""
    return f"{function}({args}{scheme}{extra})"


# ---------------------------------------------------------------------------------------------
# shift_labels


def _local_shift(shard: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """The bug: this shard's tokens shifted by one in local order."""
    return torch.cat([shard[:, 1:], shard.new_full((shard.shape[0], 1), ignore_index)], dim=1)


def _rank_order_shift(case: Any, tokens: torch.Tensor, i: int) -> torch.Tensor:
    """The bug: the shards concatenated in rank order (not sequence order), shifted by one."""
    p = case.group_size
    concat = torch.cat([_shard(case, tokens, j) for j in range(p)]
                       + [tokens.new_full((tokens.shape[0], 1), _ignore(case))], dim=1)
    n = tokens.shape[1] // p
    return concat[:, i * n + 1:(i + 1) * n + 1]


def _boundaries(pos: torch.Tensor) -> set[int]:
    """Global positions after which the next token is not this shard's next local token."""
    nxt = torch.cat([pos[1:], pos.new_tensor([-1])])
    return {int(t) for t, u in zip(pos, nxt) if int(u) != int(t) + 1}


def _explain_labels(case: Any, tokens: torch.Tensor, got: dict, want: dict) -> tuple[str, str]:
    """(evidence, hint) for wrong labels, from what the usual bugs would have returned."""
    ii = _ignore(case)
    ranks = case.members
    same = lambda r, t: isinstance(got[r], torch.Tensor) and got[r].shape == t.shape and torch.equal(got[r], t)
    wrong, at_boundary = set(), True
    for i, r in enumerate(ranks):
        pos = member_positions(case, i)
        if not isinstance(got[r], torch.Tensor) or got[r].shape != want[r].shape:
            return "", SHIFT_HINT
        bad = {int(pos[j]) for j in (got[r] != want[r]).any(dim=0).nonzero().flatten()}
        wrong |= bad
        at_boundary &= bad <= _boundaries(pos)
    listed = ", ".join(map(str, sorted(wrong)[:8])) + (" ..." if len(wrong) > 8 else "")
    if all(same(r, _local_shift(_shard(case, tokens, i), ii)) for i, r in enumerate(ranks)):
        return (f"The labels differ only at shard boundaries (global positions {listed}): they are each "
                f"shard's own tokens shifted by one in local order, so the label after the last token of "
                f"a chunk is ignore_index, or the next token of the wrong chunk, instead of the token at "
                f"t + 1 that another rank (or another chunk) holds."), SHIFT_HINT
    if case.scheme != "contiguous" and all(same(r, _rank_order_shift(case, tokens, i)) for i, r in enumerate(ranks)):
        return (f"These are the shards concatenated in rank order and shifted by one: under {case.scheme} "
                f"sharding rank order is not sequence order, so the labels at global positions {listed} "
                f"come from the wrong chunk. Put the tokens back in global order first."), SHIFT_HINT
    last = _sizes(case)[1] - 1
    if wrong == {last}:
        return (f"Only the last global position {last} is wrong: it has no next token and gets "
                f"ignore_index ({ii})."), SHIFT_HINT
    if at_boundary:
        return (f"The labels differ only at shard boundaries (global positions {listed}): inside each "
                f"chunk they are right, and the token after a chunk's last position is wrong (under "
                f"zigzag, chunk r is followed by chunk r + 1 and chunk 2P-1-r by chunk 2P-r)."), SHIFT_HINT
    return "", SHIFT_HINT


@register("ex6", "labels")
class Labels(Check):
    """shift_labels on every rank's shard of the token ids, against the next-token labels, exactly."""

    sends = ("tokens",)
    reads = Reads(shape=SHAPE, params=("ignore_index",), required=("S",))

    def inputs(self, case):
        tokens = _tokens(case)
        return per_member(case, lambda i: {"tokens": _shard(case, tokens, i)})

    def judge(self, case, inputs, outcomes):
        tokens = _tokens(case)
        full = reference.next_token_labels(tokens, _ignore(case))
        ranks = case.members
        got = {r: outcomes[r].payload.get("labels") for r in ranks}
        want = {r: _shard(case, full, i) for i, r in enumerate(ranks)}
        for i, r in enumerate(ranks):
            verdict = check_tensor(_call_text(case, "shift_labels", "tokens"), got[r], want[r], rank=r,
                                   token_dim=1, positions=member_positions(case, i), exact=True)
            if verdict is None:
                continue
            if verdict.kind is Kind.MISMATCH:
                evidence, verdict.hint = _explain_labels(case, tokens, got, want)
                if evidence:
                    verdict.message += f"\n{evidence}"
            elif verdict.kind is Kind.WRONG_DTYPE:
                verdict.hint = "Labels are int64, as F.cross_entropy wants them."
            return verdict
        return PASS


# ---------------------------------------------------------------------------------------------
# sharded_cross_entropy


def _logits(case: Any) -> torch.Tensor:
    """Seeded logits (B, S, V) in the case's dtype: the reference starts from the same rounded values."""
    b, s, v = _sizes(case)
    return randn(case, b, s, v, salt=32, scale=case.params.get("scale", 2.0)).to(DTYPES[case.dtype])


def _reference_loss(logits: torch.Tensor, labels: torch.Tensor, ii: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Single-device loss and logits gradient in float64, from the logits as the ranks got them."""
    x = logits.detach().to(torch.float64, copy=True).requires_grad_(True)
    loss = reference.cross_entropy(x, labels, ii)
    loss.backward()
    return loss.detach(), x.grad


def _local_means(case: Any, logits: torch.Tensor, labels: torch.Tensor) -> list[torch.Tensor | None]:
    """Each rank's mean over its own valid labels (None where it holds none), in float64."""
    out = []
    for i in range(case.group_size):
        lab = _shard(case, labels, i)
        if (lab != _ignore(case)).any():
            out.append(reference.cross_entropy(_shard(case, logits, i), lab, _ignore(case)))
        else:
            out.append(None)
    return out


def _grad_tolerance(case: Any, grad: torch.Tensor) -> Tolerance:
    """The case's tolerance with atol relative to the gradient's scale.

    logits.grad is (softmax - onehot) / N: its elements are around 1/N and smaller, below the absolute
    tolerance of bfloat16 (1.6e-2), where a fixed atol would pass any gradient at all. So atol is the
    dtype's tolerance times max|reference gradient|. A correct bfloat16 F.cross_entropy on one device is
    up to ~0.8% of that scale off float64 (measured); the bfloat16 tolerance is 1.6% at P = 1, growing
    with P, so it is a fair margin and still far from a gradient P times too large.
    """
    tol = tolerance(case.dtype, case.group_size)
    return Tolerance(rtol=tol.rtol, atol=tol.atol * float(grad.abs().max()))


def _ratio(got: list[torch.Tensor], want: list[torch.Tensor]) -> tuple[float, float]:
    """Least-squares factor c with got ≈ c·want over all ranks, and the relative residual."""
    g = torch.cat([t.double().flatten() for t in got])
    w = torch.cat([t.double().flatten() for t in want])
    c = float(g @ w / (w @ w).clamp_min(1e-300))
    return c, float((g - c * w).norm() / w.norm().clamp_min(1e-300))


def _explain_loss(case: Any, losses: dict, ref: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor,
                  tol: Tolerance) -> tuple[str, str]:
    """(evidence, hint) for a loss value that is wrong on some rank."""
    ranks = case.members
    values = {r: float(losses[r].double()) for r in ranks}
    close = lambda a, b: abs(a - b) <= tol.atol + tol.rtol * abs(b)
    means = _local_means(case, logits, labels)
    counts = [int((_shard(case, labels, i) != _ignore(case)).sum()) for i in range(len(ranks))]
    valid = [float(m) for m in means if m is not None]
    text = ", ".join(f"rank {r}: {values[r]:.6g}" for r in ranks)
    if len(set(counts)) > 1 and valid:
        of_valid, of_all = sum(valid) / len(valid), sum(valid) / len(ranks)
        for mean in (of_valid, of_all):
            if not close(mean, float(ref)) and all(close(values[r], mean) for r in ranks):
                return (f"The loss is the mean of per-rank means ({mean:.6g}; the reference is {float(ref):.6g}). "
                        f"The ranks hold {', '.join(map(str, counts))} valid labels: a mean of means weighs "
                        f"every rank alike, so the loss matches when every rank has the same number of valid "
                        f"tokens but not otherwise."), MEAN_HINT
    if any(not close(values[r], values[ranks[0]]) for r in ranks):
        local = [m is not None and close(values[r], float(m)) for r, m in zip(ranks, means)]
        if all(local):
            return (f"The loss differs between ranks ({text}): each rank returns the mean over its own "
                    f"tokens. Every rank must return the mean over the whole sequence."), MEAN_HINT
        return (f"The loss differs between ranks ({text}): every rank must return the same global mean."
                ), MEAN_HINT
    return "", MEAN_HINT


def _explain_grad(case: Any, got: list, want: list, logits: torch.Tensor, labels: torch.Tensor,
                  tol: Tolerance) -> tuple[str, str]:
    """(evidence, hint) for a wrong logits.grad: a factor P or 1/P, or the gradient of a local mean."""
    p = case.group_size
    if not all(isinstance(g, torch.Tensor) and g.shape == w.shape for g, w in zip(got, want)):
        return "", ""
    c, resid = _ratio(got, want)
    exact = resid <= max(tol.rtol, 1e-6)
    if exact and p > 1 and abs(c - p) <= 0.02 * p:
        return (f"logits.grad is {c:.4g} times the reference on every rank (P = {p}): the gradients are P times "
                f"the reference."), AUTOGRAD_HINT
    if exact and p > 1 and abs(c - 1 / p) <= 0.02 / p:
        return (f"logits.grad is {c:.4g} times the reference on every rank: 1/P (P = {p}). Each rank's gradient "
                f"is already its share of the global mean; do not divide it by P."), MEAN_HINT
    local = []
    for i in range(p):
        lab = _shard(case, labels, i)
        if not (lab != _ignore(case)).any():
            local.append(torch.zeros_like(want[i]))
            continue
        _, g = _reference_loss(_shard(case, logits, i), lab, _ignore(case))
        local.append(g)
    c, resid = _ratio(got, local)
    if resid <= max(tol.rtol, 1e-6) and abs(c - 1) <= 0.02:
        return ("logits.grad is the gradient of each rank's own mean (divided by its local count of valid "
                "labels): the gradient of the global mean divides by the global count."), MEAN_HINT
    return "", ""


@register("ex6", "loss")
class Loss(Check):
    """sharded_cross_entropy: the value on every rank, and logits.grad after every rank's own backward."""

    sends = ("logits", "labels")
    reads = Reads(shape=SHAPE, params=("ignore_index", "pad", "scale"), required=("S",))

    def inputs(self, case):
        logits = _logits(case)
        labels = _labels(case, _tokens(case))
        return per_member(case, lambda i: {"logits": _shard(case, logits, i), "labels": _shard(case, labels, i)})

    def judge(self, case, inputs, outcomes):
        ranks = case.members
        dtype = DTYPES[case.dtype]
        logits = _logits(case)
        labels = _labels(case, _tokens(case))
        ref, ref_grad = _reference_loss(logits, labels, _ignore(case))
        tol = tolerance(case.dtype, len(ranks))
        empty = [r for i, r in enumerate(ranks) if not (_shard(case, labels, i) != _ignore(case)).any()]
        payloads = {r: outcomes[r].payload for r in ranks}
        name = _call_text(case, "sharded_cross_entropy", "logits, labels")

        # 1) The value: a 0-dim tensor in the logits' dtype, the same on every rank, the global mean
        for r in ranks:
            verdict = check_tensor(f"the loss of {name}", payloads[r].get("loss"), ref, rank=r, dtype=dtype,
                                   tol=tol)
            if verdict is None:
                continue
            if verdict.kind is Kind.MISMATCH:
                losses = {q: payloads[q].get("loss") for q in ranks}
                if all(isinstance(v, torch.Tensor) and v.dim() == 0 for v in losses.values()):
                    evidence, verdict.hint = _explain_loss(case, losses, ref, logits, labels, tol)
                    if evidence:
                        verdict.message += f"\n{evidence}"
            elif verdict.kind is Kind.NAN_INF and empty:
                verdict.hint = EMPTY_HINT.format(r=empty[0])
            elif verdict.kind is Kind.WRONG_DTYPE:
                verdict.hint = ("The loss has the logits' dtype: compute in float32 or more if you like, "
                                "then cast the result back.")
            elif verdict.kind is Kind.WRONG_SHAPE:
                verdict.hint = "Return a 0-dim tensor, as F.cross_entropy with reduction='mean' does."
            return verdict

        # 2) The gradient: every rank's .backward() on its own loss gives its shard of the reference gradient
        if any(payloads[r].get("no_grad") for r in ranks):
            r = next(r for r in ranks if payloads[r].get("no_grad"))
            return fail(Kind.CONTRACT, f"rank {r}: the loss of {name} does not require grad, so .backward() "
                                       f"cannot reach the logits", hint=("Build the returned loss from the "
                                       "logits with differentiable ops; only the all-reduced numbers are detached."))
        gtol = _grad_tolerance(case, ref_grad)
        want = [_shard(case, ref_grad, i) for i in range(len(ranks))]
        got = [payloads[r].get("grad") for r in ranks]
        for i, r in enumerate(ranks):
            verdict = check_tensor("logits.grad", got[i], want[i], rank=r, dtype=dtype, tol=gtol,
                                   token_dim=1, positions=member_positions(case, i))
            if verdict is None:
                continue
            if verdict.kind is Kind.MISMATCH:
                evidence, hint = _explain_grad(case, got, want, logits, labels, gtol)
                if evidence:
                    verdict.message += f"\n{evidence}"
                verdict.hint = hint or verdict.hint
            elif verdict.kind is Kind.NAN_INF and empty:
                verdict.hint = EMPTY_HINT.format(r=empty[0])
            elif verdict.kind is Kind.WRONG_TYPE:
                verdict.hint = "logits.grad is None after backward: the loss is not connected to the logits."
            return verdict
        return PASS


# ---------------------------------------------------------------------------------------------
# argument errors

@register("ex6", "errors")
class Errors(Check):
    """Bad arguments raise ValueError naming them; every rank makes the same call, so none waits alone."""

    sends = ("tokens",)

    def inputs(self, case):
        tokens = torch.randint(0, 11, (2, 4), generator=generator(case, salt=33))
        return [{"tokens": tokens} for _ in range(case.world_size)]

    def judge(self, case, inputs, outcomes):
        expected = {call: arg for call, (_, _, arg) in BAD_LABELS.items()}
        for r in case.members:
            verdict = judge_value_errors(outcomes[r].payload, expected)
            if verdict:
                verdict.message = f"rank {r}: {verdict.message}"
                return verdict
        return PASS
