"""The AU adapter: action-unit intensities -> conditioning tokens -> decoupled cross-attention.

An MLP maps a sample's AU vector (FACS 0-5) to K tokens in the text encoder's
embedding space. Every cross-attention layer of the frozen UNet gets its own
key/value projections for those tokens (IP-Adapter style, initialised from the
layer's text projections); its output is

    text_attention(q, K_text, V_text) + au_scale * to_out(attention(q, K_au, V_au))

The AU tokens travel concatenated after the 77 text tokens in
``encoder_hidden_states``; each processor splits them off. With ``au_scale = 0``
(or no AU tokens) the layer's original processor runs alone, which gives
exactly the plain pipeline. Otherwise, when that processor is diffusers' SDPA
attention, both attentions share one query projection and one output
projection (``to_out`` is linear), so the adapter adds only the attention over
its few tokens. Weights are saved as safetensors next to a JSON config.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from builder.core.errors import ModelLoadError
from builder.synthesis.au_adapter_config import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    AUAdapterConfig,
)

AU_MAX = 5.0


class AUEncoder(nn.Module):
    """AU intensities (B, n_au) on the 0-5 scale -> (B, num_tokens, cross_attention_dim)."""

    def __init__(self, n_au: int, num_tokens: int, hidden_dim: int, cross_attention_dim: int):
        super().__init__()
        self.num_tokens, self.dim = num_tokens, cross_attention_dim
        self.mlp = nn.Sequential(nn.Linear(n_au, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, num_tokens * cross_attention_dim))
        self.norm = nn.LayerNorm(cross_attention_dim)

    def forward(self, au: torch.Tensor) -> torch.Tensor:
        tokens = self.mlp(au / AU_MAX).view(au.shape[0], self.num_tokens, self.dim)
        return self.norm(tokens)


class AUAttnProcessor(nn.Module):
    """Decoupled cross-attention for one UNet attention layer."""

    def __init__(self, hidden_size: int, cross_attention_dim: int, num_tokens: int, text_tokens: int):
        super().__init__()
        self.to_k_au = nn.Linear(cross_attention_dim, hidden_size, bias=False)
        self.to_v_au = nn.Linear(cross_attention_dim, hidden_size, bias=False)
        self.num_tokens, self.text_tokens = num_tokens, text_tokens
        self.scale = 1.0
        self.base = None  # the layer's original processor, set on attach (not a parameter)
        self.sdpa_base = False  # whether it is diffusers' SDPA processor (set on attach)

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs):
        length = encoder_hidden_states.shape[1]
        if length == self.text_tokens:
            return self.base(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        if length != self.text_tokens + self.num_tokens:
            raise ValueError(f"expected {self.text_tokens} text tokens, optionally followed by {self.num_tokens} "
                             f"AU tokens, got {length}")
        text = encoder_hidden_states[:, : self.text_tokens]
        au = encoder_hidden_states[:, self.text_tokens :]
        if self.scale == 0:
            return self.base(attn, hidden_states, text, attention_mask, temb)
        if _plain(attn, self.sdpa_base, hidden_states, attention_mask):
            return self._shared(attn, hidden_states, text, au)
        out = self.base(attn, hidden_states, text, attention_mask, temb)
        mixed, _ = self._au_attention(attn, attn.to_q(hidden_states), au)
        return out + self.scale * _linear_part(attn.to_out[0], mixed) / attn.rescale_output_factor

    def _shared(self, attn, hidden_states, text, au):
        """Both attentions from one query projection, summed before one output projection (to_out is linear):
        the same result as the layer's processor plus the AU term, with a projection of the image tokens
        in and out instead of two of each."""
        query = attn.to_q(hidden_states)
        if getattr(attn, "fused_projections", False) and hasattr(attn, "to_kv"):
            key, value = attn.to_kv(text).chunk(2, dim=-1)
        else:
            key, value = attn.to_k(text), attn.to_v(text)
        mixed, split = self._au_attention(attn, query, au)
        words = F.scaled_dot_product_attention(split(query), split(key), split(value))
        words = words.transpose(1, 2).reshape(mixed.shape).to(query.dtype)
        return attn.to_out[1](attn.to_out[0](words + self.scale * mixed)) / attn.rescale_output_factor

    def _au_attention(self, attn, query, au):
        """attention(q, K_au, V_au) with heads merged, (B, L, inner); and the head-splitting function."""
        batch, heads = query.shape[0], attn.heads
        head_dim = query.shape[-1] // heads
        split = lambda x: x.view(batch, -1, heads, head_dim).transpose(1, 2)  # noqa: E731
        mixed = F.scaled_dot_product_attention(split(query), split(self.to_k_au(au)), split(self.to_v_au(au)))
        return mixed.transpose(1, 2).reshape(batch, -1, heads * head_dim).to(query.dtype), split


def _linear_part(layer, x: torch.Tensor) -> torch.Tensor:
    """``layer(x)`` without its bias: the output projection of the AU term. A plain Linear is one matmul; a layer
    a LoRA wraps (peft, unfused) adds its low-rank update, which ``layer.weight`` alone would leave out."""
    if isinstance(layer, nn.Linear):
        return F.linear(x, layer.weight)
    out = layer(x)
    return out - layer.bias if layer.bias is not None else out


def _is_sdpa(processor) -> bool:
    """Exactly diffusers' SDPA attention processor (a subclass may compute more)."""
    from diffusers.models.attention_processor import (
        AttnProcessor2_0,
        FusedAttnProcessor2_0,
    )

    return type(processor) in (AttnProcessor2_0, FusedAttnProcessor2_0)


def _plain(attn, sdpa_base: bool, hidden_states, attention_mask) -> bool:
    """Whether the layer's processor is diffusers' SDPA attention with nothing around it (as in every SD 1.x/2.x
    cross-attention layer), so ``_shared`` computes what it would."""
    return (sdpa_base and attention_mask is None and hidden_states.ndim == 3
            and attn.spatial_norm is None and attn.group_norm is None and not attn.norm_cross
            and attn.norm_q is None and attn.norm_k is None and not attn.residual_connection)


class AUAdapter(nn.Module):
    """The AU encoder plus one ``AUAttnProcessor`` per cross-attention layer of a UNet."""

    def __init__(self, config: AUAdapterConfig):
        super().__init__()
        self.config = config
        self.encoder = AUEncoder(len(config.au_names), config.num_tokens, config.hidden_dim, config.cross_attention_dim)
        self.processors = nn.ModuleDict({
            _key(name): AUAttnProcessor(size, config.cross_attention_dim, config.num_tokens, config.text_tokens)
            for name, size in config.layers.items()
        })

    # -- construction ---------------------------------------------------------
    @classmethod
    def for_unet(cls, unet, au_names: list[str], num_tokens: int = 4, hidden_dim: int = 256, text_tokens: int = 77,
                 seed: int = 0) -> AUAdapter:
        """A fresh adapter for ``unet``: random AU encoder, AU projections copied from the text ones."""
        layers = {name: attn.to_k.out_features for name, attn in _cross_attention_layers(unet).items()}
        if not layers:
            raise ModelLoadError("the UNet has no cross-attention layers", fix="use a Stable Diffusion UNet")
        cross_dim = unet.config.cross_attention_dim
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            adapter = cls(AUAdapterConfig(au_names=list(au_names), cross_attention_dim=cross_dim, layers=layers,
                                          num_tokens=num_tokens, hidden_dim=hidden_dim, text_tokens=text_tokens))
        for name, attn in _cross_attention_layers(unet).items():
            proc = adapter.processors[_key(name)]
            proc.to_k_au.weight.data.copy_(attn.to_k.weight.data.float())
            proc.to_v_au.weight.data.copy_(attn.to_v.weight.data.float())
        return adapter

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> AUAdapter:
        """Load a saved adapter: the config validated field by field, the weights from safetensors only (a
        pickled, truncated or mismatched file is a ``ModelLoadError`` naming the file)."""
        from builder.models.files import load_safetensors, read_json_config

        folder = Path(folder)
        config_path, weights_path = folder / CONFIG_NAME, folder / WEIGHTS_NAME
        if not config_path.is_file() or not weights_path.is_file():
            raise ModelLoadError(f"is not an AU adapter folder (needs {CONFIG_NAME} and {WEIGHTS_NAME})",
                                 file=str(folder),
                                 fix="point generator.au_adapter.path at the output of `build-dataset train-au-adapter`")
        fix = "re-save the adapter with `build-dataset train-au-adapter` (this version of the tool)"
        config = read_json_config(config_path, AUAdapterConfig, "AU adapter config", fix)
        state = load_safetensors(weights_path, fix)
        adapter = cls(config)
        try:
            adapter.load_state_dict(state, strict=True)
        except (RuntimeError, OSError) as exc:
            raise ModelLoadError(f"weights do not match its config ({str(exc).splitlines()[0]})", file=str(weights_path),
                                 fix="re-save the adapter; config and weights must come from the same run") from None
        return adapter

    def save_pretrained(self, folder: str | Path) -> None:
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().float().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(tensors, folder / WEIGHTS_NAME, metadata={"format": "pt"})
        (folder / CONFIG_NAME).write_text(json.dumps(self.config.model_dump(), indent=2) + "\n")

    # -- use ------------------------------------------------------------------
    def attach(self, unet) -> None:
        """Install the AU processors on ``unet``'s cross-attention layers (the adapter must fit it)."""
        layers = _cross_attention_layers(unet)
        expected = {name: attn.to_k.out_features for name, attn in layers.items()}
        if expected != self.config.layers or unet.config.cross_attention_dim != self.config.cross_attention_dim:
            raise ModelLoadError("the AU adapter was made for another UNet (its cross-attention layers differ)",
                                 fix="train the adapter on this generator with `build-dataset train-au-adapter`")
        for name, attn in layers.items():
            if attn.spatial_norm is not None or attn.group_norm is not None:
                raise ModelLoadError(f"unsupported attention layer {name}", fix="use a Stable Diffusion 1.x/2.x UNet")
            proc = self.processors[_key(name)]
            if proc.base is None:
                proc.__dict__["base"] = attn.processor  # a plain reference, never a submodule
                proc.sdpa_base = _is_sdpa(attn.processor)
            attn.set_processor(proc)

    def set_scale(self, scale: float) -> None:
        for proc in self.processors.values():
            proc.scale = float(scale)

    def tokens(self, au: torch.Tensor) -> torch.Tensor:
        """(B, n_au) intensities -> (B, num_tokens, dim) tokens, in the adapter's dtype and device."""
        param = next(self.encoder.parameters())
        return self.encoder(au.to(device=param.device, dtype=param.dtype))

    def condition(self, text_embeds: torch.Tensor, au: torch.Tensor) -> torch.Tensor:
        """Text embeddings (B, 77, D) with the AU tokens of ``au`` appended."""
        return torch.cat([text_embeds, self.tokens(au).to(text_embeds.dtype)], dim=1)


def attach_au_adapter(pipe, spec, au_names: tuple[str, ...]) -> tuple[AUAdapter, dict]:
    """Load ``spec`` (a manifest ``AUAdapterSpec``), check it fits the manifest and the pipeline, attach it.

    Returns the adapter and its provenance (path, sha256 of the weights, scale).
    """
    from builder.models.diffusion import file_sha256

    adapter = AUAdapter.from_pretrained(spec.path)
    if tuple(adapter.config.au_names) != tuple(au_names):
        raise ModelLoadError(
            f"the AU adapter in '{spec.path}' reads AUs {', '.join(adapter.config.au_names)}, but the manifest's "
            f"AU set is {', '.join(au_names)}",
            fix="set aus.au_set to the adapter's AU set, or train an adapter for this AU set",
        )
    if adapter.config.text_tokens != pipe.tokenizer.model_max_length:
        raise ModelLoadError(f"the AU adapter expects {adapter.config.text_tokens} text tokens, the pipeline "
                             f"uses {pipe.tokenizer.model_max_length}", fix="train the adapter on this generator")
    adapter.to(device=pipe.unet.device, dtype=pipe.unet.dtype).eval().requires_grad_(False)
    adapter.attach(pipe.unet)
    adapter.set_scale(spec.scale)
    return adapter, {"path": str(spec.path), "sha256": file_sha256(Path(spec.path) / WEIGHTS_NAME), "scale": spec.scale}


def _key(name: str) -> str:
    return name.replace(".", "__")


def _cross_attention_layers(unet) -> dict:
    """Attention module name -> module, for every cross-attention (attn2) layer, in a fixed order."""
    from diffusers.models.attention_processor import Attention

    return {name: mod for name, mod in unet.named_modules()
            if isinstance(mod, Attention) and name.endswith("attn2") and mod.is_cross_attention}
