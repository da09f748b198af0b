"""Exercise 1: sequence sharding, the layout every other exercise stands on.

The state: activations of a long sequence, (B, S, ...) for hidden states and
token ids, (B, H, S, D) inside attention. Context parallelism cuts the token
axis S into P shards, one per rank, so each rank stores and computes S/P
tokens. Everything except attention is token-local, so those layers run on the
shard unchanged; attention and the loss must communicate (exercises 3-6).

Which tokens a rank holds is a choice, and causal attention makes it matter.
The query at position i attends to i + 1 keys, so work grows along the
sequence:

    contiguous  rank r holds [r*S/P, (r+1)*S/P)            P=4, S=8:  r0: 0 1  r1: 2 3  r2: 4 5  r3: 6 7
                simplest; the last rank does ~2P-1 times the attention work of the first.
    zigzag      2P chunks; rank r holds chunk r and chunk 2P-1-r          r0: 0 7  r1: 1 6  r2: 2 5  r3: 3 4
                an early and a late chunk on every rank: equal work. Needs S % 2P == 0.
    striped     rank r holds r, r+P, r+2P, ...                            r0: 0 4  r1: 1 5  r2: 2 6  r3: 3 7
                round-robin tokens: equal work, and every block is half-visible.

Rank r is the rank within the group the code is handed: r = dist.get_rank(group)
and P = dist.get_world_size(group), not the global rank (graders run cases on
subgroups such as global ranks 0, 1, 3, where global rank 3 is r = 2, P = 3).

So a rank's shard is not a contiguous range of positions: code that needs to
know where a token sits (causal masks, rotary embeddings, next-token labels)
must ask `shard_positions`, never assume `rank * S/P + i`.

Contract: shards are contiguous copies in local order, the input is never
modified, `dim` may be negative, and bad arguments raise ValueError naming the
argument (seq_len, world_size, rank, scheme, dim).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

SCHEMES = ("contiguous", "zigzag", "striped")


def shard_positions(seq_len: int, rank: int, world_size: int, scheme: str = "contiguous") -> torch.Tensor:
    """Global token indices held by `rank`, in local order: int64, shape (seq_len // world_size,), CPU.

    >>> shard_positions(8, 1, 4, "zigzag")
    tensor([1, 6])
    """
    # Step 1: validate: scheme known, world_size >= 1, 0 <= rank < world_size,
    #         seq_len divisible by world_size (by 2 * world_size for zigzag).
    # Step 2: build the indices for the scheme (torch.arange does most of it).
    ### BEGIN SOLUTION
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}")
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
    chunks = 2 * world_size if scheme == "zigzag" else world_size
    if seq_len < 0 or seq_len % chunks:
        raise ValueError(f"seq_len {seq_len} must be divisible by {chunks} for scheme {scheme!r}")
    if scheme == "contiguous":
        n = seq_len // world_size
        return torch.arange(rank * n, (rank + 1) * n)
    if scheme == "zigzag":
        c = seq_len // chunks
        late = chunks - 1 - rank
        return torch.cat([torch.arange(rank * c, (rank + 1) * c), torch.arange(late * c, (late + 1) * c)])
    return torch.arange(rank, seq_len, world_size)
    ### END SOLUTION


def sequence_shard(x: torch.Tensor, rank: int, world_size: int, dim: int = 1,
                   scheme: str = "contiguous") -> torch.Tensor:
    """This rank's shard of `x` along `dim`: a new contiguous tensor; `x` is left unchanged.

    x (B, S, ...) with dim=1 gives (B, S/P, ...); x (B, H, S, D) with dim=2 gives (B, H, S/P, D).
    """
    # Step 1: normalise a negative dim (ValueError naming dim if out of range).
    # Step 2: select this rank's positions along dim, on x's device.
    ### BEGIN SOLUTION
    if not -x.dim() <= dim < x.dim():
        raise ValueError(f"dim {dim} is out of range for a tensor with {x.dim()} dims")
    dim = dim % x.dim()
    index = shard_positions(x.shape[dim], rank, world_size, scheme).to(x.device)
    return x.index_select(dim, index)  # index_select copies: the shard never aliases x
    ### END SOLUTION


def sequence_unshard(shards: list[torch.Tensor], dim: int = 1, scheme: str = "contiguous") -> torch.Tensor:
    """The inverse of sequence_shard: the P shards in rank order back to the full tensor in global order."""
    # Step 1: concatenate the shards along dim (local orders, rank after rank).
    # Step 2: every concatenated slot has a global position (shard_positions of each rank);
    #         put each slot back at its position (scatter, or gather with the inverse permutation).
    ### BEGIN SOLUTION
    world_size = len(shards)
    if world_size == 0:
        raise ValueError("world_size: shards is empty")
    joined = torch.cat(list(shards), dim=dim)
    dim = dim % joined.dim()
    seq_len = joined.shape[dim]
    order = torch.cat([shard_positions(seq_len, r, world_size, scheme) for r in range(world_size)])
    inverse = torch.argsort(order).to(joined.device)
    return joined.index_select(dim, inverse)
    ### END SOLUTION


def gather_sequence(x_local: torch.Tensor, dim: int = 1, scheme: str = "contiguous",
                    group: dist.ProcessGroup | None = None) -> torch.Tensor:
    """Collective: every rank of `group` gets the full tensor, in global order.

    P is the size of `group` and rank r's shard is the one it holds as
    dist.get_rank(group); pass group= to every collective.
    """
    # Step 1: all-gather the shards of every rank (same shape on every rank).
    # Step 2: undo the sharding with sequence_unshard.
    ### BEGIN SOLUTION
    world_size = dist.get_world_size(group)
    x_local = x_local.contiguous()
    parts = [torch.empty_like(x_local) for _ in range(world_size)]
    dist.all_gather(parts, x_local, group=group)
    return sequence_unshard(parts, dim=dim, scheme=scheme)
    ### END SOLUTION
