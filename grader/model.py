"""The kit's small causal LM and its single-device training step: the baseline for ex7.

Everything the capstone needs that is not an exercise lives here, in one file:

- ModelConfig: the sizes, each with why it was chosen.
- TinyCausalLM: token embedding, rotary positions, pre-norm causal attention
  blocks, MLP, final norm, LM head. Its call is fixed by the lab contract:

      model(tokens, positions, attention) -> logits (B, S_local, V)

  tokens (B, S_local) int64, positions (S_local,) int64 global positions (the
  rotary embedding uses them, so a rank must pass the positions it holds, not
  arange(S_local)), attention(q, k, v) maps (B, H, S_local, D) to the causal
  attention output of this rank's queries. The model never communicates: all
  of context parallelism hides behind `attention`, the positions and the loss.
- build_model: the same weights on every rank and in every process, from the seed.
- causal_attention: exact single-device attention, for the baseline.
- reference_train_step: the single-device step that cp_train_step must reproduce.

References: nanoGPT's model.py (layout, pre-norm blocks), RoFormer (rotary
embedding, arXiv:2104.09864) in the rotate-half form of GPT-NeoX and Llama.
"""

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class ModelConfig:
    vocab_size: int = 96  # small, so (B, S, V) logits stay cheap; not a power of two, to catch V/P assumptions
    n_layer: int = 2  # two blocks: the second attends to outputs that already mix positions
    n_head: int = 8  # Ulysses needs n_head % P == 0: 8 allows P = 1, 2, 4, 8
    n_embd: int = 64  # head_dim = 64 / 8 = 8: even, as the rotary embedding needs
    mlp_ratio: int = 4  # the usual 4x MLP width
    rope_base: float = 10000.0  # RoFormer's base: the slowest pair turns once per ~10^4 tokens
    seed: int = 0  # weights come from this seed alone, so every rank builds the same model


def rotary_cos_sin(positions, head_dim, base, dtype):
    """cos and sin of shape (S, head_dim // 2) for the given global positions.

    Angles are computed in float64 from the integer positions, so a position gets
    bitwise the same values whether it is computed on one device or on a shard.
    """
    inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64, device=positions.device) / head_dim)
    angles = positions.to(torch.float64)[:, None] * inv_freq[None, :]  # (S, D/2)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rotary(x, cos, sin):
    """Rotate each (x_i, x_{i+D/2}) pair of x (B, H, S, D) by its position's angle."""
    x1, x2 = x.chunk(2, dim=-1)  # (B, H, S, D/2) each
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


def causal_attention(q, k, v):
    """Exact causal attention on one device: q, k, v (B, H, S, D) hold the whole sequence."""
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


class CausalSelfAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.n_head = config.n_head
        self.q_proj = nn.Linear(config.n_embd, config.n_embd)
        self.k_proj = nn.Linear(config.n_embd, config.n_embd)
        self.v_proj = nn.Linear(config.n_embd, config.n_embd)
        self.out_proj = nn.Linear(config.n_embd, config.n_embd)

    def forward(self, x, cos, sin, attention):
        B, S, C = x.shape
        # (B, S, C) -> (B, H, S, D): the layout of F.scaled_dot_product_attention
        q, k, v = (proj(x).view(B, S, self.n_head, C // self.n_head).transpose(1, 2)
                   for proj in (self.q_proj, self.k_proj, self.v_proj))
        # Rotary on q and k only: scores then depend on the position difference
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        y = attention(q, k, v)  # (B, H, S, D): the only place tokens meet tokens
        assert y.shape == q.shape, f"attention returned shape {tuple(y.shape)}, expected {tuple(q.shape)}"
        return self.out_proj(y.transpose(1, 2).reshape(B, S, C))  # (B, S, C)


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.fc = nn.Linear(config.n_embd, config.mlp_ratio * config.n_embd)
        self.proj = nn.Linear(config.mlp_ratio * config.n_embd, config.n_embd)

    def forward(self, x):
        return self.proj(F.gelu(self.fc(x)))  # per token: no communication under any sharding


class Block(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd)
        self.mlp = MLP(config)

    def forward(self, x, cos, sin, attention):
        x = x + self.attn(self.ln_1(x), cos, sin, attention)  # pre-norm residual, as in GPT-2
        return x + self.mlp(self.ln_2(x))


class TinyCausalLM(nn.Module):
    """Token embedding, n_layer blocks, final norm, LM head. No position table: rotary only."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        # Seed inside a forked RNG: the weights depend on config.seed alone, and the
        # caller's random state is left as it was.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            self.wte = nn.Embedding(config.vocab_size, config.n_embd)
            self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
            self.ln_f = nn.LayerNorm(config.n_embd)
            self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)

    def forward(self, tokens, positions, attention):
        B, S = tokens.shape
        assert positions.shape == (S,), f"positions must have shape ({S},), got {tuple(positions.shape)}"
        assert not positions.is_floating_point(), f"positions must be integers, got {positions.dtype}"
        x = self.wte(tokens)  # (B, S, C)
        cos, sin = rotary_cos_sin(positions.to(x.device), self.config.n_embd // self.config.n_head,
                                  self.config.rope_base, x.dtype)  # (S, D/2) each
        for block in self.blocks:
            x = block(x, cos, sin, attention)
        return self.lm_head(self.ln_f(x))  # (B, S, V)


def build_model(config=None, dtype=torch.float32, device="cpu"):
    """The kit's model with weights from config.seed, in dtype, on device.

    Weights are drawn on the CPU and then moved, so every rank on every device
    starts from bitwise the same parameters.
    """
    return TinyCausalLM(config or ModelConfig()).to(device=device, dtype=dtype)


def reference_train_step(model, tokens, ignore_index=-100):
    """One single-device training step on full sequences: forward, loss, backward.

    tokens (B, S) int64. The label at position t is the token at t + 1; the last
    position has none and gets ignore_index. The loss is the mean cross-entropy
    over all non-ignored labels. Sets every parameter's .grad (accumulating, as
    backward does) and takes no optimizer step. Returns the detached loss.
    """
    B, S = tokens.shape
    positions = torch.arange(S, device=tokens.device)  # (S,)
    logits = model(tokens, positions, causal_attention)  # (B, S, V)
    labels = torch.full_like(tokens, ignore_index)  # (B, S)
    labels[:, :-1] = tokens[:, 1:]
    loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=ignore_index)
    loss.backward()
    return loss.detach()
