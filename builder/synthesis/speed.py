"""Speed settings of the generation path (manifest ``generator.speed``) and the background PNG writer.

Nothing here changes what an image shows: channels-last, fused projections and
``torch.compile`` reorder float arithmetic (pixels may move by rounding, as
with another batch size), and the writer only moves PNG encoding off the
generating thread. PNG encoding of a 512x512 image takes about 50 ms of one
CPU core (zlib, which releases the GIL), so at 20 images per second a writer
in the generating thread would leave the GPU idle about half the time.
"""
from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from builder.core.errors import ModelLoadError
from builder.manifest import Speed


def apply_layout(pipe, speed: Speed) -> list[str]:
    """Memory layout and fused projections, before adapters attach; returns what was applied."""
    import torch

    applied = []
    if speed.fuse_qkv:
        try:
            pipe.unet.fuse_qkv_projections()
            pipe.vae.fuse_qkv_projections()
        except (ValueError, AttributeError) as exc:
            raise ModelLoadError(f"generator.speed.fuse_qkv: this pipeline's attention cannot be fused ({exc})",
                                 fix="set generator.speed.fuse_qkv: false") from None
        applied.append("fuse_qkv")
    if speed.channels_last:
        pipe.unet.to(memory_format=torch.channels_last)
        pipe.vae.to(memory_format=torch.channels_last)
        applied.append("channels_last")
    return applied


def apply_compile(pipe, speed: Speed, extra: tuple = ()) -> list[str]:
    """``torch.compile`` the UNet's forward and the VAE decoder (after adapters attach); returns what was applied.

    ``extra`` holds further modules to compile in place (the guide's decoder).
    The modules are compiled in place (``Module.compile``), so the pipeline,
    the AU adapter's processors and the guidance code call them unchanged.
    """
    if speed.compile == "off":
        return []
    mode = None if speed.compile == "default" else speed.compile
    for module in (pipe.unet, pipe.vae.decoder, *extra):
        module.compile(mode=mode)
    return [f"compile:{speed.compile}"]


def attention_backend(pipe) -> str:
    """Names of the UNet's attention processors (SDPA-based ones end in 2_0), for the record."""
    names = sorted({type(p).__name__ for p in pipe.unet.attn_processors.values()})
    return ",".join(names)


class ImageWriter:
    """Encodes float images to PNG files, on ``threads`` worker threads (0: at once, in the caller's thread).

    ``submit`` returns a callable that waits for the file and re-raises the
    writer's error, if any. The bytes written do not depend on ``threads``.
    """

    def __init__(self, threads: int, encode: Callable):
        self.encode = encode
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="png-writer") if threads > 0 else None

    def submit(self, path: Path, pixels) -> Callable[[], None]:
        if self.pool is None:
            self.encode(path, pixels)
            return lambda: None
        future: Future = self.pool.submit(self.encode, path, pixels)
        return future.result

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True)
            self.pool = None
