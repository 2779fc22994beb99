"""Capture a UNet's decoder feature maps and its text cross-attention maps during one forward.

``FeatureTap(unet, tokens)`` is a context manager. Inside it, each UNet forward
records, for every ``unet.up_blocks[i]`` (coarse to fine), the feature map
entering its upsampler (or the block's output when it has none), and, for every
cross-attention layer (``attn2``) in the up blocks, the softmax attention of
each spatial position over the first ``tokens`` text positions, averaged over
heads and over the layers that share a resolution. The probe processor
computes the same output as diffusers' ``AttnProcessor``, so the UNet's output
is unchanged. Processors and hooks are restored on exit, also on errors.
"""
from __future__ import annotations

import math

import torch


class FeatureTap:
    """Hooks on ``unet`` for the duration of a ``with`` block; read ``features``, ``attention``, ``shapes()``."""

    def __init__(self, unet, tokens: int):
        self.unet, self.tokens = unet, tokens
        self.features: list[torch.Tensor] = []
        self._attn_sum: dict[tuple[int, int], torch.Tensor] = {}
        self._attn_count: dict[tuple[int, int], int] = {}
        self._latent_hw: tuple[int, int] = (0, 0)
        self._handles: list = []
        self._saved: dict = {}

    # -- results --------------------------------------------------------------
    @property
    def attention(self) -> dict[tuple[int, int], torch.Tensor]:
        """(h, w) -> (B, tokens, h, w) attention maps, averaged over heads and layers at that resolution."""
        return {hw: total / self._attn_count[hw] for hw, total in self._attn_sum.items()}

    def shapes(self) -> dict:
        """{'features': [[C, h, w], ...] coarse to fine, 'attention': {'hxw': [tokens, h, w]}}."""
        return {"features": [list(f.shape[1:]) for f in self.features],
                "attention": {f"{h}x{w}": list(a.shape[1:]) for (h, w), a in self.attention.items()}}

    # -- hooks ----------------------------------------------------------------
    def __enter__(self) -> FeatureTap:
        try:
            self._handles.append(self.unet.register_forward_pre_hook(self._start, with_kwargs=True))
            for i, block in enumerate(self.unet.up_blocks):
                upsamplers = getattr(block, "upsamplers", None)
                if upsamplers:
                    hook = upsamplers[0].register_forward_pre_hook(lambda _m, args, i=i: self._keep(i, args[0]))
                else:
                    hook = block.register_forward_hook(lambda _m, _args, out, i=i: self._keep(i, out))
                self._handles.append(hook)
            for name, module in self.unet.up_blocks.named_modules():
                if name.endswith("attn2") and getattr(module, "is_cross_attention", True):
                    self._saved[module] = module.processor
                    module.set_processor(_ProbeProcessor(self))
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        for module, processor in self._saved.items():
            module.set_processor(processor)
        self._saved.clear()

    def _start(self, _module, args, kwargs) -> None:
        sample = args[0] if args else kwargs["sample"]
        self._latent_hw = tuple(sample.shape[-2:])
        self.features = [None] * len(self.unet.up_blocks)
        self._attn_sum.clear()
        self._attn_count.clear()

    def _keep(self, index: int, output) -> None:
        self.features[index] = (output[0] if isinstance(output, tuple) else output).detach()

    def _record(self, probs: torch.Tensor, batch: int) -> None:
        """probs: (batch * heads, h*w, keys) -> averaged over heads, first ``tokens`` keys, (B, tokens, h, w)."""
        length = probs.shape[1]
        lat_h, lat_w = self._latent_hw
        factor = math.sqrt(lat_h * lat_w / length)
        h, w = round(lat_h / factor), round(lat_w / factor)
        maps = probs.view(batch, -1, length, probs.shape[-1]).mean(1)[..., : self.tokens]
        maps = maps.transpose(1, 2).reshape(batch, -1, h, w).detach()
        key = (h, w)
        self._attn_sum[key] = self._attn_sum[key] + maps if key in self._attn_sum else maps
        self._attn_count[key] = self._attn_count.get(key, 0) + 1


class _ProbeProcessor:
    """diffusers' ``AttnProcessor`` (explicit softmax), also handing the attention probabilities to the tap."""

    def __init__(self, tap: FeatureTap):
        self.tap = tap

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 *args, **kwargs):
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
        batch = hidden_states.shape[0]
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        attention_mask = attn.prepare_attention_mask(attention_mask, context.shape[1], batch)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        if encoder_hidden_states is not None and attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)

        query = attn.head_to_batch_dim(attn.to_q(hidden_states))
        key = attn.head_to_batch_dim(attn.to_k(context))
        value = attn.head_to_batch_dim(attn.to_v(context))
        probs = attn.get_attention_scores(query, key, attention_mask)  # scale, softmax over keys
        self.tap._record(probs, batch)
        hidden_states = attn.batch_to_head_dim(torch.bmm(probs, value))
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))

        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor
