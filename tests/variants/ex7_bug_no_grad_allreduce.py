"""Bug: never all-reduces the parameter gradients: each rank keeps the gradient of its own tokens' share of the loss."""

import torch.distributed as dist

from ex1_sequence_shard import shard_positions
from ex3_allgather_attention import all_gather_kv_attention
from ex4_ulysses_attention import ulysses_attention
from ex5_ring_attention import ring_attention
from ex6_loss import sharded_cross_entropy, shift_labels

ATTENTIONS = {"all_gather": all_gather_kv_attention, "ulysses": ulysses_attention, "ring": ring_attention}


def make_attention(attention, scheme="contiguous", group=None):
    if attention not in ATTENTIONS:
        raise ValueError(f"attention must be one of {sorted(ATTENTIONS)}, got {attention!r}")
    fn = ATTENTIONS[attention]

    def attend(q, k, v):
        out = fn(q, k, v, scheme=scheme, group=group)
        if q.requires_grad and not out.requires_grad:
            raise NotImplementedError(f"attention={attention!r}: its output does not require grad "
                                      "(for 'ring', the ex5 bonus backward is required)")
        return out

    return attend


def cp_train_step(model, tokens, scheme="contiguous", attention="all_gather", group=None):
    attend = make_attention(attention, scheme, group)
    rank, world_size = dist.get_rank(group), dist.get_world_size(group)
    positions = shard_positions(tokens.shape[1] * world_size, rank, world_size, scheme).to(tokens.device)
    logits = model(tokens, positions, attend)
    loss = sharded_cross_entropy(logits, shift_labels(tokens, scheme=scheme, group=group), group=group)
    loss.backward()
    # BUG: no all-reduce of .grad; replicas would step apart
    return loss.detach()
