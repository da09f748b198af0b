"""Exercise 7 (capstone): one context-parallel training step of the kit's causal LM.

What is sharded: the token axis, dim 1, of the tokens (B, S), so of every
activation (B, S, C) and of the logits (B, S, V); inside attention, dim 2 of
q, k, v (B, H, S, D). Rank r holds the S/P tokens at the global positions
shard_positions(S, r, P, scheme). What is replicated: every parameter. So
context parallelism is data parallelism inside one sequence: each rank runs
the same model on different tokens, and only three places need the others.

1. Attention, the only layer where tokens meet tokens: ex3 (all-gather K/V),
   ex4 (Ulysses all-to-all) or ex5 (ring), all through the model's pluggable
   attention(q, k, v). Embeddings, norms, the MLP and the LM head act per token.
2. The loss: labels across shard boundaries and one global mean (ex6).
3. The parameter gradients. Each rank's backward yields the gradient of its
   own tokens' share of the loss; the single-device gradient is their sum over
   ranks, so every .grad is all-reduced with SUM, as DDP does across a batch.

The trade-off: activation memory per rank drops by P (long sequences fit), and
the price is attention communication every layer plus one gradient all-reduce
per step. One, not one per parameter: on a model this small each collective
costs its latency, not its bytes, so the gradients travel as one flat buffer
(DDP buckets them the same way, and overlaps the buckets with backward).

The model is the kit's, complete: `grader.model.TinyCausalLM`, built with
`grader.model.build_model()`. Its call is model(tokens, positions, attention)
-> logits (B, S_local, V), and `grader.model.reference_train_step(model, tokens)`
is the single-device step that every rank's result must match.

Silent bugs (the step runs and returns a plausible loss):
- Rotary positions computed locally, torch.arange(S/P): every rank believes it
  holds the start of the sequence. Correct at P = 1 only.
- Parameter gradients never all-reduced: each rank steps with the gradient of
  its own tokens only, and replicas drift apart.
- Gradients averaged (divided by P) instead of summed: the loss already
  divides by the global token count, so the average is P times too small.
- Labels shifted after sharding, a mean of per-rank means, a loss all-reduced
  through autograd: see ex6.
- Leftover .grad from an earlier step: backward accumulates into it and the
  all-reduce then sums it P times. Start from cleared gradients.
"""

import torch
import torch.distributed as dist

from ex1_sequence_shard import shard_positions
from ex3_allgather_attention import all_gather_kv_attention
from ex4_ulysses_attention import ulysses_attention
from ex5_ring_attention import ring_attention
from ex6_loss import sharded_cross_entropy, shift_labels

ATTENTIONS = {"all_gather": all_gather_kv_attention, "ulysses": ulysses_attention, "ring": ring_attention}


def make_attention(attention, scheme="contiguous", group=None):
    """The model's attention(q, k, v) for a name in ATTENTIONS, bound to scheme and group.

    Raises ValueError naming attention for an unknown name, and, for "ring",
    NotImplementedError when ring_attention's output cannot be differentiated
    (the ex5 bonus backward is required to train through it).
    """
    # Step 1: look the name up in ATTENTIONS; unknown -> ValueError naming attention.
    # Step 2: return a closure attend(q, k, v) that calls it with scheme and group.
    # Step 3: in the closure, raise if q requires grad but the output does not.
    # YOUR CODE HERE
    raise NotImplementedError()


def cp_train_step(model, tokens, scheme="contiguous", attention="all_gather", group=None):
    """One context-parallel training step: forward, loss, backward, gradient all-reduce.

    tokens: (B, S/P) int64, this rank's shard of the (B, S) batch. Afterwards
    every parameter's .grad equals the single-device gradient of
    reference_train_step on the full batch, on every rank; no optimizer step.
    Call it with cleared gradients (None or zero). Returns the detached loss,
    the same on every rank. A collective: every rank of the group must call it.
    """
    # Step 1: build the attention function (before any communication, so a bad name cannot hang).
    # Step 2: global positions of this rank's tokens, on tokens.device.
    # Step 3: forward to the logits.
    # Step 4: labels by shift_labels, loss by sharded_cross_entropy, backward.
    # Step 5: all-reduce (SUM) every parameter's .grad over the group, as one flat buffer.
    # YOUR CODE HERE
    raise NotImplementedError()
