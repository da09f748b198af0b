"""Bug: zigzag puts the late chunk first on every rank (chunk 2P-1-r, then chunk r)."""

import torch
import torch.distributed as dist


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
    return torch.stack([torch.cat([chunks[parts - 1 - r], chunks[r]]) for r in range(world_size)])


def shard_positions(seq_len, rank, world_size, scheme="contiguous"):
    table = _layout(seq_len, world_size, scheme)
    if rank < 0 or rank >= world_size:
        raise ValueError(f"rank {rank} out of range")
    return table[rank].clone()


def sequence_shard(x, rank, world_size, dim=1, scheme="contiguous"):
    dim = dim if dim >= 0 else dim + x.dim()
    pos = shard_positions(x.size(dim), rank, world_size, scheme)
    return torch.index_select(x, dim, pos.to(x.device)).contiguous()


def sequence_unshard(shards, dim=1, scheme="contiguous"):
    dim = dim if dim >= 0 else dim + shards[0].dim()
    full_len = sum(s.size(dim) for s in shards)
    order = _layout(full_len, len(shards), scheme).reshape(-1).to(shards[0].device)
    out = torch.empty_like(torch.cat(shards, dim))
    out.index_copy_(dim, order, torch.cat(shards, dim))
    return out


def gather_sequence(x_local, dim=1, scheme="contiguous", group=None):
    p = dist.get_world_size(group)
    dim = dim if dim >= 0 else dim + x_local.dim()
    moved = x_local.movedim(dim, 0).contiguous()
    out = torch.empty((p * moved.shape[0],) + tuple(moved.shape[1:]), dtype=moved.dtype, device=moved.device)
    dist.all_gather_into_tensor(out, moved, group=group)
    return sequence_unshard(list(out.movedim(0, dim).chunk(p, dim=dim)), dim=dim, scheme=scheme)
