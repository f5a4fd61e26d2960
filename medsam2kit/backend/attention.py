"""sam2's rotary cross-attention with an optional key-padding mask (for batched tracking).

Objects whose memories hold different frames (prompted on different frames, added later) have
memories of different lengths; to track them as one batch, each object's memory is padded to the
longest and the padding is masked out of the cross-attention. sam2's ``RoPEAttention`` takes no
mask, so :class:`MaskableRoPEAttention` repeats its forward (projections, heads, rotary encoding
of the spatial memory tokens, scaled dot-product attention) with ``attn_mask`` added; with no
mask set it is sam2's own forward. :func:`key_padding` sets the mask for the duration of one
call, on the modules of one model.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from sam2.modeling.position_encoding import apply_rotary_enc
from sam2.modeling.sam.transformer import RoPEAttention


class MaskableRoPEAttention(RoPEAttention):
    """sam2's ``RoPEAttention`` whose keys can be masked (``key_padding_mask``: ``(B, N_k)`` bool,
    True = padding, ignored). Set only inside :func:`key_padding`."""

    key_padding_mask: torch.Tensor | None = None

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_k_exclude_rope: int = 0) -> torch.Tensor:
        mask = self.key_padding_mask
        if mask is None:
            out: torch.Tensor = super().forward(q, k, v, num_k_exclude_rope=num_k_exclude_rope)
            return out
        q = self._separate_heads(self.q_proj(q), self.num_heads)
        k = self._separate_heads(self.k_proj(k), self.num_heads)
        v = self._separate_heads(self.v_proj(v), self.num_heads)
        w = h = math.sqrt(q.shape[-2])
        freqs: torch.Tensor = getattr(self, "freqs_cis").to(q.device)  # untyped in sam2
        if freqs.shape[0] != q.shape[-2]:
            freqs = self.compute_cis(end_x=w, end_y=h).to(q.device)
        self.freqs_cis = freqs
        num_k_rope = k.size(-2) - num_k_exclude_rope
        q, k[:, :, :num_k_rope] = apply_rotary_enc(
            q, k[:, :, :num_k_rope], freqs_cis=freqs, repeat_freqs_k=self.rope_k_repeat
        )
        dropout_p = self.dropout_p if self.training else 0.0
        keep = ~mask[:, None, None, :].to(q.device)  # (B, 1, 1, N_k): True = attend
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=keep, dropout_p=dropout_p)
        result: torch.Tensor = self.out_proj(self._recombine_heads(out))
        return result


def make_maskable(memory_attention: torch.nn.Module) -> int:
    """Turn the cross-attentions of a memory attention into :class:`MaskableRoPEAttention` (same
    parameters and buffers; only the forward gains the mask). Returns how many were turned."""
    count = 0
    for layer in getattr(memory_attention, "layers", []):
        attn = getattr(layer, "cross_attn_image", None)
        if type(attn) is RoPEAttention:
            attn.__class__ = MaskableRoPEAttention
            count += 1
    return count


@contextlib.contextmanager
def key_padding(memory_attention: torch.nn.Module, mask: torch.Tensor | None) -> Iterator[None]:
    """Mask ``(B, N_k)`` (True = padding) on every maskable cross-attention for one call."""
    modules = [m for m in memory_attention.modules() if isinstance(m, MaskableRoPEAttention)]
    if mask is not None and not modules:
        raise RuntimeError("key_padding: the memory attention has no maskable cross-attention")
    for m in modules:
        m.key_padding_mask = mask
    try:
        yield
    finally:
        for m in modules:
            m.key_padding_mask = None


__all__ = ["MaskableRoPEAttention", "key_padding", "make_maskable"]
