"""Checks of exercise 7 (one context-parallel training step): the loss and every parameter's gradient.

Every rank (grader/tasks/ex7.py) builds the kit's TinyCausalLM from the model
seed it is sent (grader.model, trusted code; the same weights everywhere),
hands it and its shard of the seeded tokens to the student's cp_train_step,
and sends back the returned loss, every parameter's .grad and which
parameters changed value. The grader builds the same model in float64 and
runs reference_train_step on the whole sequence: that is the truth at every
P. When a value is wrong, it recomputes what the usual bugs would give (local
rotary positions, a mean of per-rank means, labels shifted inside each shard,
gradients averaged or never all-reduced) to name the one that matches.
"""

from __future__ import annotations

import hashlib
from functools import cached_property
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from grader import reference
from grader.checks import (Check, Reads, generator, judge_value_errors, member_positions, per_member, register,
                           traffic)
from grader.checks.attention import ALL_TO_ALL_OPS, GATHER_OPS, P2P_RECV, P2P_SEND, SMALL
from grader.compare import Tolerance, check_tensor, tolerance
from grader.model import ModelConfig, build_model, causal_attention, reference_train_step
from grader.tasks import DTYPES
from grader.tasks.ex7 import BAD, attention_kind, model_config
from grader.verdict import PASS, Kind, Verdict, fail

IGNORE = -100

POSITIONS_HINT = ("Pass the model the global positions of this rank's tokens, shard_positions(S, rank, P, "
                  "scheme): the rotary embedding turns each token by its position in the whole sequence.")
LOSS_HINT = ("The loss is ex6's: labels by shift_labels (in sequence order), the global mean by "
             "sharded_cross_entropy. Check exercise 6 first.")
REDUCE_HINT = ("After backward each rank's .grad holds what its own tokens contribute; the single-device "
               "gradient is the sum over the ranks: all-reduce every .grad with SUM over the group (the loss "
               "already divides by the global token count, so do not average).")


def _sizes(case: Any) -> tuple[int, int]:
    return case.shape.get("B", 2), case.shape["S"]


def model_seed(case: Any) -> int:
    """The seed of the model's weights: a stable hash of the case's seed, so each case has its own
    weights and the ranks, which are sent this number, are not sent the seed of the inputs."""
    return int.from_bytes(hashlib.blake2b(f"{case.seed}/model".encode(), digest_size=4).digest(), "little")


def _config(case: Any) -> ModelConfig:
    return model_config(case, model_seed(case))


def _tokens(case: Any) -> torch.Tensor:
    b, s = _sizes(case)
    return torch.randint(0, _config(case).vocab_size, (b, s), generator=generator(case, salt=41))


class Truth:
    """The float64 single-device step on the whole sequence, and what the usual bugs would give instead.

    The reference runs at once; the bugs' values only when a judgement needs them.
    """

    def __init__(self, case: Any):
        self.case = case
        self.p = case.group_size
        self.tokens = _tokens(case)
        model = self._model()
        self.loss = reference_train_step(model, self.tokens)
        self.names = [n for n, _ in model.named_parameters()]
        self.grads = {n: p.grad for n, p in model.named_parameters()}

    def _model(self) -> torch.nn.Module:
        return build_model(_config(self.case), dtype=torch.float64)  # same float32 draws, upcast exactly

    def _per_token(self, rope_positions: torch.Tensor, labels: torch.Tensor, model=None) -> torch.Tensor:
        model = model or self._model()
        logits = model(self.tokens, rope_positions, causal_attention)  # (B, S, V)
        return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE,
                               reduction="none").view_as(labels)  # (B, S), 0 where ignored

    @cached_property
    def labels(self) -> torch.Tensor:
        return reference.next_token_labels(self.tokens, IGNORE)

    @cached_property
    def local_positions_loss(self) -> float:
        """The bug: every rank passes torch.arange(S/P) as its positions."""
        s = self.tokens.shape[1]
        rope = torch.empty(s, dtype=torch.long)
        for i in range(self.p):
            rope[member_positions(self.case, i)] = torch.arange(s // self.p)
        with torch.no_grad():
            per_token = self._per_token(rope, self.labels)
        return float(per_token.sum() / (self.labels != IGNORE).sum())

    @cached_property
    def local_shift_loss(self) -> float:
        """The bug: labels shifted inside each shard, ignore_index at every shard's last position."""
        labels = torch.full_like(self.tokens, IGNORE)
        for i in range(self.p):
            pos = member_positions(self.case, i)
            shard = self.tokens[:, pos]
            labels[:, pos] = torch.cat([shard[:, 1:], shard.new_full((shard.shape[0], 1), IGNORE)], dim=1)
        with torch.no_grad():
            per_token = self._per_token(torch.arange(self.tokens.shape[1]), labels)
        return float(per_token.sum() / (labels != IGNORE).sum())

    @cached_property
    def mean_of_means(self) -> tuple[float, list[int]]:
        """The bug: the mean over ranks of each rank's own mean; and the valid-label count per rank."""
        with torch.no_grad():
            per_token = self._per_token(torch.arange(self.tokens.shape[1]), self.labels)
        means, counts = [], []
        for i in range(self.p):
            pos = member_positions(self.case, i)
            n = int((self.labels[:, pos] != IGNORE).sum())
            counts.append(n)
            if n:
                means.append(float(per_token[:, pos].sum()) / n)
        return sum(means) / len(means), counts

    @cached_property
    def local_grads(self) -> list[dict[str, torch.Tensor]] | None:
        """The bug of no all-reduce: the .grad rank i holds after its own backward, one dict per rank.

        Attention's backward carries the gradient of the whole loss across ranks, so rank i's .grad is
        the gradient of the global loss through the parameter uses at rank i's tokens only (not the
        gradient of its share of the loss). Forward hooks make the other tokens' uses see detached
        parameters: the values are unchanged, and only rank i's tokens reach .grad. None when the model
        holds a parameterised layer the hooks do not know.
        """
        s = self.tokens.shape[1]
        out = []
        for i in range(self.p):
            mask = torch.zeros(s, dtype=torch.bool)
            mask[member_positions(self.case, i)] = True
            model = self._model()
            owners = [m for m in model.modules() if any(True for _ in m.parameters(recurse=False))]
            if not all(isinstance(m, (nn.Linear, nn.LayerNorm, nn.Embedding)) for m in owners):
                return None
            for m in owners:
                m.register_forward_hook(_own_tokens_only(mask))
            logits = model(self.tokens, torch.arange(s), causal_attention)  # (B, S, V)
            F.cross_entropy(logits.flatten(0, 1), self.labels.flatten(), ignore_index=IGNORE).backward()
            out.append({n: torch.zeros_like(p) if p.grad is None else p.grad for n, p in model.named_parameters()})
        return out


def _own_tokens_only(mask: torch.Tensor):
    """A forward hook: the layer's output, with detached parameters at the tokens outside `mask` (S,)."""

    def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        (x,) = args
        if isinstance(module, nn.Linear):
            other = F.linear(x, module.weight.detach(), None if module.bias is None else module.bias.detach())
        elif isinstance(module, nn.LayerNorm):
            other = F.layer_norm(x, module.normalized_shape, module.weight.detach(), module.bias.detach(),
                                 module.eps)
        else:
            other = F.embedding(x, module.weight.detach())
        keep = mask.view(1, -1, *([1] * (output.dim() - 2)))  # the token axis is dim 1 everywhere
        return torch.where(keep, output, other)

    return hook


def _ratio(got: list[torch.Tensor], want: list[torch.Tensor]) -> tuple[float, float]:
    """Least-squares factor c with got ≈ c·want, and the relative residual."""
    g = torch.cat([t.double().flatten() for t in got])
    w = torch.cat([t.double().flatten() for t in want])
    c = float(g @ w / (w @ w).clamp_min(1e-300))
    return c, float((g - c * w).norm() / w.norm().clamp_min(1e-300))


def _explain_loss(case: Any, truth: Truth, values: dict[int, float], tol: Tolerance) -> tuple[str, str]:
    """(evidence, hint) for a loss that differs from the reference on some rank."""
    ranks = case.members
    close = lambda a, b: abs(a - b) <= tol.atol + tol.rtol * abs(b)
    if any(not close(values[r], values[ranks[0]]) for r in ranks):
        text = ", ".join(f"rank {r}: {values[r]:.6g}" for r in ranks)
        return (f"The loss differs between ranks ({text}): every rank must return the same global mean."
                ), LOSS_HINT
    value, ref = values[ranks[0]], float(truth.loss)
    if truth.p > 1 and close(value, truth.local_positions_loss) and not close(ref, truth.local_positions_loss):
        return (f"The loss ({value:.6g}; the reference is {ref:.6g}) is the one the model gives with local "
                f"rotary positions, torch.arange(S/P) on every rank: every rank embeds its tokens as if it "
                f"held the start of the sequence."), POSITIONS_HINT
    mean, counts = truth.mean_of_means
    if len(set(counts)) > 1 and close(value, mean) and not close(ref, mean):
        return (f"The loss is the mean of per-rank means ({mean:.6g}; the reference is {ref:.6g}). The ranks "
                f"hold {', '.join(map(str, counts))} valid labels: a mean of means matches when every rank has "
                f"the same number of valid tokens but not otherwise."), LOSS_HINT
    if truth.p > 1 and close(value, truth.local_shift_loss) and not close(ref, truth.local_shift_loss):
        return (f"The loss ({value:.6g}; the reference is {ref:.6g}) is the one with labels shifted inside "
                f"each shard: the labels differ at shard boundaries."), LOSS_HINT
    return "", ""


def _explain_grads(case: Any, truth: Truth, got: dict[int, dict], tol: Tolerance) -> tuple[str, str]:
    """(evidence, hint) for parameter gradients that differ from the reference."""
    ranks = case.members
    names = truth.names
    if not all(isinstance(got[r].get(n), torch.Tensor) and got[r][n].shape == truth.grads[n].shape
               for r in ranks for n in names):
        return "", ""
    exact = max(10 * tol.rtol, 1e-6)
    c, resid = _ratio([got[r][n] for r in ranks for n in names], [truth.grads[n] for r in ranks for n in names])
    p = truth.p
    if resid <= exact and p > 1 and abs(c - 1 / p) <= 0.02 / p:
        return (f"Every parameter gradient is {c:.4g} times the reference: 1/P (P = {p}). The gradients are "
                f"averaged over the group, so they are P times too small: the loss already divides by the "
                f"global token count, and the ranks' shares add up."), REDUCE_HINT
    if resid <= exact and p > 1 and abs(c - p) <= 0.02 * p:
        return (f"Every parameter gradient is {c:.4g} times the reference: the gradients are P times the "
                f"reference (P = {p}). Something is summed over the group twice (an all-reduce inside "
                f"autograd in the loss, or leftover .grad summed again)."), REDUCE_HINT
    local = truth.local_grads if p > 1 else None
    if local is not None:
        c, resid = _ratio([got[r][n] for r in ranks for n in names],
                          [local[i][n] for i, r in enumerate(ranks) for n in names])
        if resid <= exact and abs(c - 1) <= 0.02:
            return ("On every rank the parameter gradients equal the local ones, what that rank's own tokens "
                    "contribute to the gradient: no all-reduce over the group."), REDUCE_HINT
    differ = [r for r in ranks[1:] if any(not torch.allclose(got[r][n].double(), got[ranks[0]][n].double(),
                                                             rtol=tol.rtol, atol=tol.atol) for n in names)]
    if differ:
        return (f"The gradients differ between rank {ranks[0]} and rank {differ[0]}: after the step every rank "
                f"must hold the same, single-device gradient."), REDUCE_HINT
    return "", ""


FLOATS = {"float64", "float32", "bfloat16", "float16"}
REDUCE_SCATTER_OPS = {"reduce_scatter", "reduce_scatter_tensor", "reduce_scatter_single", "_reduce_scatter_base"}
#: per attention kind: (what it is called, the ops that move its tensors between ranks, the others it may
#: use on large tensors: ex3's backward sums K/V gradients with a reduce-scatter). all_reduce is every
#: kind's: the loss's and the gradients' reductions.
PATTERNS = {
    "all_gather": ("ex3's all-gather KV", GATHER_OPS, REDUCE_SCATTER_OPS),
    "ulysses": ("ex4's Ulysses all-to-all", ALL_TO_ALL_OPS, set()),
    "ring": ("ex5's ring", P2P_SEND | P2P_RECV, set()),
}


def judge_attention_comm(case: Any, outcomes: list) -> Verdict | None:
    """The step's attention communicates as the kind it was asked for: its own ops carry large activations,
    no other kind's do. Read from the record, which judge_record holds to the kernel's bytes. Integer
    tensors are not the attention's: ex6's shift_labels gathers the token ids."""
    attention = attention_kind(case)
    name, moves, also = PATTERNS[attention]
    for r in case.members:
        big = [c for c in outcomes[r].trace if c.get("done", True) and "op" in c
               and sum(t.get("numel", 0) for t in c.get("tensors") or [] if t.get("dtype") in FLOATS) > SMALL]
        ops = {c["op"] for c in big}
        foreign = sorted(ops - moves - also - {"all_reduce"})
        if foreign:
            return fail(Kind.COMMUNICATION, f"rank {r} calls {', '.join(foreign)} on large activations in "
                                            f"cp_train_step(attention={attention!r}): the step's attention did "
                                            f"not run as {name}, which moves them with "
                                            f"{', '.join(sorted(moves))} only",
                        hint=ATTENTION_HINT)
        if len(case.members) > 1 and not ops & moves:
            return fail(Kind.COMMUNICATION, f"rank {r} never calls {', '.join(sorted(moves))} on a large "
                                            f"activation in cp_train_step(attention={attention!r}): the step's "
                                            f"attention did not run as {name}", hint=ATTENTION_HINT)
    return None


ATTENTION_HINT = ("Build the model's attention from the name you are given: 'all_gather' -> ex3's "
                  "all_gather_kv_attention, 'ulysses' -> ex4's ulysses_attention, 'ring' -> ex5's "
                  "ring_attention, each bound to the scheme and the group.")


@register("ex7", "step")
class Step(Check):
    """cp_train_step on the kit's model: loss, parameters left unchanged, every .grad vs the float64 step."""

    sends = ("tokens", "model_seed")
    reads = Reads(shape=("B", "S"), params=("attention", "model"), required=("S",))
    evidence = True  # the record of the attention's calls, held to the kernel's bytes

    def inputs(self, case):
        tokens, seed = _tokens(case), model_seed(case)
        return per_member(case, lambda i: {"tokens": reference.shard(tokens, i, case.group_size, 1, case.scheme),
                                           "model_seed": seed})

    def judge(self, case, inputs, outcomes):
        ranks = case.members
        payloads = {r: outcomes[r].payload for r in ranks}
        attention = attention_kind(case)
        stuck = [r for r in ranks if payloads[r].get("ring_not_attempted")]
        if stuck:
            return fail(Kind.NOT_IMPLEMENTED,
                        f"attention='ring': the ring bonus backward is not attempted (rank {stuck[0]}: "
                        f"{payloads[stuck[0]]['ring_not_attempted']}). A bonus case: no regular points are lost.")
        if len(ranks) > 1:
            verdict = traffic.judge_record(case, outcomes)
            if verdict:
                return verdict
        dtype = DTYPES[case.dtype]
        truth = Truth(case)
        tol = tolerance(case.dtype, len(ranks))
        call = f"cp_train_step(model, tokens, scheme={case.scheme!r}, attention={attention!r})"

        # 1) The loss: equal on every rank and to the reference, in the model's dtype, detached
        for r in ranks:
            verdict = check_tensor(f"the loss of {call}", payloads[r].get("loss"), truth.loss, rank=r,
                                   dtype=dtype, tol=tol)
            if verdict is None:
                continue
            if verdict.kind is Kind.MISMATCH:
                losses = [payloads[q].get("loss") for q in ranks]
                if all(isinstance(v, torch.Tensor) and v.dim() == 0 for v in losses):
                    evidence, hint = _explain_loss(case, truth, {q: float(v) for q, v in zip(ranks, losses)}, tol)
                    if evidence:
                        verdict.message += f"\n{evidence}"
                    verdict.hint = hint
            return verdict
        for r in ranks:
            if payloads[r].get("loss_requires_grad"):
                return fail(Kind.CONTRACT, f"rank {r}: {call} returned a loss that still requires grad; return "
                                           f"loss.detach()")
            if payloads[r].get("changed"):
                changed = payloads[r]["changed"]
                return fail(Kind.CONTRACT, f"rank {r}: {call} changed the values of {len(changed)} parameters "
                                           f"({', '.join(changed[:3])}{' ...' if len(changed) > 3 else ''}): "
                                           f"the step takes no optimizer step, it only sets .grad")

        # 2) Every parameter's gradient, on every rank, against the single-device step
        got = {r: payloads[r].get("grads") or {} for r in ranks}
        missing = [n for n in truth.names if any(got[r].get(n) is None for r in ranks)]
        if missing:
            r = next(r for r in ranks if got[r].get(missing[0]) is None)
            hint = ("Backward never reached these parameters. If attention's output does not require grad, "
                    "the q, k and v projections (and the norm before them) are cut off.")
            if attention == "ring":
                hint += (" Without the ex5 bonus backward, ring_attention cannot train: raise a clear error "
                         "for attention='ring' instead (the case then counts as not attempted).")
            return fail(Kind.WRONG_TYPE, f"rank {r}: after {call}, {len(missing)} parameters have no .grad "
                                         f"({', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''})",
                        hint=hint)
        for n in truth.names:
            for r in ranks:
                verdict = check_tensor(f"{n}.grad", got[r].get(n), truth.grads[n], rank=r, dtype=dtype, tol=tol)
                if verdict is None:
                    continue
                if verdict.kind is Kind.MISMATCH:
                    evidence, hint = _explain_grads(case, truth, got, tol)
                    if evidence:
                        verdict.message += f"\n{evidence}"
                    verdict.hint = hint
                return verdict
        return judge_attention_comm(case, outcomes) or PASS


@register("ex7", "errors")
class Errors(Check):
    """An unknown attention raises ValueError naming attention, on every rank (so no rank waits alone)."""

    sends = Step.sends
    reads = Reads(shape=("B", "S"), params=("model",), required=("S",))  # its attention is the bad one

    def inputs(self, case):
        return Step().inputs(case)

    def judge(self, case, inputs, outcomes):
        for r in case.members:
            verdict = judge_value_errors(outcomes[r].payload, {BAD: "attention"})
            if verdict:
                verdict.message = f"rank {r}: {verdict.message}"
                return verdict
        return PASS
