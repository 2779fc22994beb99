"""Vision-language caption models: any transformers image-text-to-text model (``AutoModelForImageTextToText``
with its ``AutoProcessor``), from the Hub or a local save_pretrained folder.

``load_captioner(ref, device)`` checks the reference first (``reference_problems``: a folder or cached Hub
snapshot whose ``config.json`` names a model type transformers loads as image-text-to-text, with an image
processor and a tokenizer; a causal LM without vision, a diffusers pipeline or a classifier is refused with the
field ``annotate.captions.model``), then loads it in eval mode (``local_files_only`` when ``HF_HUB_OFFLINE``;
``trust_remote_code`` is never passed, so a model that needs its own code is refused). ``.sha256`` covers the
weight files (the safetensors files when there are any).

``Captioner.caption(images, instruction, max_new_tokens, seeds)`` captions a batch with one prompt: the
processor's chat template (a user turn of the image and the instruction, then the generation prompt) when it
has one, else the image token and the instruction. Decoding is greedy, or with ``seeds`` sampled per image
(``SAMPLING``: temperature 0.7, nucleus 0.9) from that image's own generator, so a caption depends on its image
and seed only, never on the batch it ran in. The text returned is what the model added (the prompt echo
removed), printable, on one line.

``load_text_tokenizer(ref)`` loads the CLIP tokenizer of the generator the pairs will train
(``annotate.checks.text_encoder``), and ``count_tokens`` counts a caption in it as the generator would see it.
"""
from __future__ import annotations

import ast
import functools
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from builder.core.errors import ModelLoadError
from builder.models.files import first_line, safetensors_problem

FIELD = "annotate.captions.model"
TEXT_ENCODER_FIELD = "annotate.checks.text_encoder"
SAMPLING = {"temperature": 0.7, "top_p": 0.9}
"""How a seeded caption is sampled (recorded in the caption stage's meta)."""
WHAT = ("a transformers image-text-to-text model (a vision-language model such as a LLaVA, Qwen2-VL, SmolVLM or "
        "PaliGemma checkpoint) as a Hub id or a save_pretrained folder, or 'template'")
PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
CLIP_TOKENIZER_FILES = ("vocab.json", "merges.txt")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_MAPPING = "MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES"


# -- references, checked without loading weights -------------------------------------------------------------------
def is_local(ref: str) -> bool:
    """A local path rather than a Hub id (the rule of ``builder.models.diffusion.resolve_checkpoint``)."""
    return Path(ref).expanduser().exists() or ref.startswith((".", "/", "~")) or ref.count("/") > 1


def reference_problems(ref: str) -> list[tuple[str, str]]:
    """(problem, fix) for each thing wrong with a caption model reference, [] when it looks loadable. Loads no
    weights and imports no torch: a local folder must hold a ``config.json`` of an image-text-to-text model type,
    an image processor, a tokenizer and complete weights; a Hub id is checked the same way in the local cache
    (when the machine is offline it must be there; online an uncached id is left to the load)."""
    if is_local(ref):
        return _folder_problems(ref, Path(ref).expanduser())
    return _hub_problems(ref)


def _folder_problems(ref: str, folder: Path) -> list[tuple[str, str]]:
    fix = f"give {WHAT}"
    if not folder.exists():
        return [(f"'{ref}' does not exist", fix)]
    if not folder.is_dir():
        return [(f"'{ref}' is a file, not a model folder", fix)]
    if (folder / "model_index.json").is_file():
        return [(f"'{ref}' is a diffusers pipeline folder (model_index.json), not an image-text-to-text model",
                 fix)]
    if not (folder / "config.json").is_file():
        return [(f"'{ref}' has no config.json: it is not a transformers model folder", fix)]
    found = _config_problems(ref, folder / "config.json")
    if found:
        return found
    if not any((folder / name).is_file() for name in PROCESSOR_FILES):
        found.append((f"'{ref}' has no image processor ({' or '.join(PROCESSOR_FILES)})",
                      "save the model's processor into the folder too (processor.save_pretrained(folder))"))
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        found.append((f"'{ref}' has no tokenizer ({', '.join(TOKENIZER_FILES)})",
                      "save the model's processor into the folder too (processor.save_pretrained(folder))"))
    weights = _weight_files(folder)
    if not weights:
        found.append((f"'{ref}' holds no weights (*.safetensors)", "save the model with model.save_pretrained(folder)"))
    for path in weights:
        problem = safetensors_problem(path) if path.suffix == ".safetensors" else None
        if problem:
            found.append((f"{path} {problem}", "save the model again with model.save_pretrained(folder)"))
    return found


def _hub_problems(repo: str) -> list[tuple[str, str]]:
    from huggingface_hub import constants
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo)
    except HFValidationError:
        return [(f"'{repo}' is neither an existing local folder nor a Hub id", f"give {WHAT}")]
    config = _cached(repo, "config.json")
    if config is None:
        if constants.HF_HUB_OFFLINE:
            return [_offline_problem(repo)]
        return []  # online: the load downloads it and checks it then
    found = _config_problems(repo, Path(config))
    if not found and constants.HF_HUB_OFFLINE and not any(_cached(repo, name) for name in PROCESSOR_FILES):
        found.append((f"'{repo}' has no image processor ({' or '.join(PROCESSOR_FILES)}) in the local Hugging Face "
                      f"cache ({constants.HF_HUB_CACHE}) and the machine is offline (HF_HUB_OFFLINE=1)",
                      f"run `hf download {repo}` on a connected machine and copy the cache over"))
    return found


def _cached(repo: str, filename: str) -> str | None:
    """The path of ``filename`` of ``repo`` in the local Hub cache, or None."""
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.utils import HFValidationError

    try:
        found = try_to_load_from_cache(repo, filename)
    except (HFValidationError, ValueError, OSError):
        return None
    return found if isinstance(found, str) else None


def _offline_problem(repo: str) -> tuple[str, str]:
    from huggingface_hub import constants

    return (f"'{repo}' is not in the local Hugging Face cache ({constants.HF_HUB_CACHE}) and the machine is offline "
            "(HF_HUB_OFFLINE=1)",
            f"run `hf download {repo}` on a connected machine and copy the cache over, give a local folder saved "
            "with save_pretrained, or unset HF_HUB_OFFLINE")


def _config_problems(ref: str, path: Path) -> list[tuple[str, str]]:
    """A ``config.json`` that transformers loads as an image-text-to-text model without remote code."""
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return [(f"{path} is not valid JSON ({first_line(exc)})", "save the model again with save_pretrained")]
    if not isinstance(config, dict):
        return [(f"{path} is not a JSON object", "save the model again with save_pretrained")]
    model_type = config.get("model_type")
    if not isinstance(model_type, str) or not model_type:
        return [(f"{path} has no field 'model_type': not a transformers model config", f"give {WHAT}")]
    if model_type in vlm_model_types():
        return []
    if config.get("auto_map"):
        return [(f"'{ref}' is a '{model_type}' model that needs its own code (auto_map in config.json), which "
                 "this tool never runs (trust_remote_code is off)",
                 f"give a model transformers supports itself: {WHAT}")]
    return [(f"'{ref}' is {describe(config)}, not an image-text-to-text model (a vision-language model)",
             f"give {WHAT}")]


def describe(config: dict) -> str:
    """What kind of model a ``config.json`` is, in words ('a text-only causal language model (GPT2LMHeadModel)')."""
    archs = [a for a in config.get("architectures") or [] if isinstance(a, str)]
    name = archs[0] if archs else f"model_type '{config.get('model_type')}'"
    if any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs):
        kind = "a text-only causal language model"
    elif any(a.endswith(("ForImageClassification", "ForSequenceClassification", "ForAudioClassification"))
             or "Classification" in a for a in archs):
        kind = "a classifier"
    elif "vision_config" in config and "text_config" in config:
        kind = "a vision-text model that does not generate text"
    else:
        kind = "a model"
    return f"{kind} ({name})"


@functools.cache
def vlm_model_types() -> frozenset[str]:
    """The model types ``AutoModelForImageTextToText`` loads, read from the installed transformers' own table
    (``MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES``) as data: its module imports torch, which a reference check
    must not need. Falls back to importing the table when its source cannot be read that way."""
    import importlib.util

    spec = importlib.util.find_spec("transformers")
    source = Path(spec.origin).parent / "models" / "auto" / "modeling_auto.py" if spec and spec.origin else None
    try:
        tree = ast.parse(source.read_text(encoding="utf-8"))
        for node in tree.body:
            if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == _MAPPING for t in node.targets):
                pairs = ast.literal_eval(node.value.args[0])
                return frozenset(model_type for model_type, _ in pairs)
    except (AttributeError, OSError, SyntaxError, ValueError, IndexError, TypeError):
        pass
    from transformers.models.auto import modeling_auto

    return frozenset(getattr(modeling_auto, _MAPPING))


def _weight_files(folder: Path) -> list[Path]:
    """The weight files a transformers folder loads: its safetensors files, else its other weight files."""
    files = sorted(p for p in folder.rglob("*") if p.suffix in WEIGHT_SUFFIXES and p.is_file())
    safetensors = [p for p in files if p.suffix == ".safetensors"]
    return safetensors or files


def weights_sha256(folder: Path) -> str:
    """sha256 over (relative path, file sha256) of the weight files (``_weight_files``); files in the Hub cache
    are links to blobs named by their sha256, which is used instead of hashing gigabytes again."""
    from builder.models.diffusion import file_sha256

    outer = hashlib.sha256()
    for path in _weight_files(folder):
        real = path.resolve()
        digest = real.name if real.parent.name == "blobs" and _SHA256.match(real.name) else file_sha256(real)
        outer.update(f"{path.relative_to(folder).as_posix()}:{digest}\n".encode())
    return outer.hexdigest()


# -- loading ---------------------------------------------------------------------------------------------------------
def load_captioner(ref: str, device: str = "auto") -> Captioner:
    """The caption model ``ref`` (a Hub id or a local folder) on ``device`` ('auto', 'cpu', 'cuda[:N]', 'mps'), in
    eval mode; a ``ModelLoadError`` naming the field, the file and the fix when it is not one."""
    from huggingface_hub import constants

    offline = bool(constants.HF_HUB_OFFLINE)
    local = is_local(ref)
    found = reference_problems(ref)
    if not found and not local and _cached(ref, "config.json") is None:  # online and not cached: fetch the config
        found = _download_config(ref)
    if found:
        message, fix = found[0]
        raise ModelLoadError(f"{FIELD}: {message}", file=ref, fix=fix)

    import torch
    from transformers import (
        AutoModelForImageTextToText,
        AutoProcessor,
        PreTrainedTokenizerBase,
    )

    from builder.models.diffusion import quiet_loading

    quiet_loading()
    where = resolve_device(device)
    dtype = torch.float32 if where in ("cpu", "mps") else (
        torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
    source = str(Path(ref).expanduser()) if local else ref
    try:
        processor = AutoProcessor.from_pretrained(source, local_files_only=local or offline)
        model = AutoModelForImageTextToText.from_pretrained(source, dtype=dtype, local_files_only=local or offline)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, ImportError) as exc:
        raise ModelLoadError(f"{FIELD}: could not load '{ref}' as an image-text-to-text model: {first_line(exc)}",
                             file=ref, fix=f"give {WHAT}") from None
    if isinstance(processor, PreTrainedTokenizerBase) or getattr(processor, "image_processor", None) is None:
        raise ModelLoadError(f"{FIELD}: '{ref}' has a tokenizer but no image processor", file=ref,
                             fix="save the model's processor into the folder (processor.save_pretrained(folder))")
    tokenizer = processor.tokenizer
    tokenizer.padding_side = "left"  # generation continues every prompt from its right end
    model = model.to(where).eval()
    model.requires_grad_(False)
    folder = Path(source) if local else Path(_cached(ref, "config.json")).parent
    return Captioner(name=ref, sha256=weights_sha256(folder), model=model, processor=processor, device=where,
                     dtype=str(dtype).removeprefix("torch."))


def _download_config(repo: str) -> list[tuple[str, str]]:
    """Fetch ``config.json`` of an uncached Hub model (online) and check it before any weights come down."""
    from huggingface_hub import hf_hub_download

    try:
        path = hf_hub_download(repo, "config.json")
    except Exception as exc:  # network, gated, missing: all are the user's to fix
        return [(f"could not get '{repo}' from the Hugging Face Hub: {first_line(exc)}",
                 "check the id, log in (`hf auth login`) for gated models, or give a local folder")]
    return _config_problems(repo, Path(path))


def resolve_device(requested: str) -> str:
    """'auto' -> 'cuda' when a GPU is visible, else 'cpu'; an unavailable device is refused."""
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(f"{FIELD}: the device is '{requested}' but no CUDA GPU is visible",
                             fix="set the device to 'auto' or 'cpu', or run on a GPU machine")
    if requested == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ModelLoadError(f"{FIELD}: the device is 'mps' but Apple's MPS backend is not available",
                             fix="set the device to 'auto' or 'cpu'")
    return requested


# -- captioning ------------------------------------------------------------------------------------------------------
@dataclass
class Captioner:
    """A loaded image-text-to-text model and its processor (``load_captioner``)."""

    name: str
    sha256: str
    model: object
    processor: object
    device: str
    dtype: str

    def prompt(self, instruction: str) -> str:
        """The text given with each image: the chat template's user turn, or the image token and the instruction."""
        if getattr(self.processor, "chat_template", None):
            messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": instruction}]}]
            return self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        token = getattr(self.processor, "image_token", None)
        return f"{token}\n{instruction}" if token else instruction

    def caption(self, images: list, instruction: str, max_new_tokens: int,
                seeds: list[int] | None = None) -> list[str]:
        """One caption per PIL image, in one batch: greedy, or sampled with one seed per image (``SAMPLING``)."""
        import torch

        if not images:
            return []
        if seeds is not None and len(seeds) != len(images):
            raise ValueError(f"{len(seeds)} seeds for {len(images)} images")
        prompt = self.prompt(instruction)
        inputs = self.processor(images=[im.convert("RGB") for im in images], text=[prompt] * len(images),
                                return_tensors="pt", padding=True)
        inputs = inputs.to(self.device, dtype=getattr(torch, self.dtype))
        settings = self._generation(max_new_tokens)
        sampler = SeededSampler(seeds, **SAMPLING) if seeds is not None else None
        with torch.inference_mode():
            out = self.model.generate(**inputs, generation_config=settings,
                                      logits_processor=[sampler] if sampler else None)
        prompt_ids = inputs["input_ids"]
        length = prompt_ids.shape[1]
        if out.shape[1] >= length and torch.equal(out[:, :length].to(prompt_ids.device), prompt_ids):
            out = out[:, length:]  # decoder-only models return the prompt before the caption
        texts = self.processor.batch_decode(out, skip_special_tokens=True)
        return [clean_caption(text, instruction) for text in texts]

    def _generation(self, max_new_tokens: int):
        """The model's generation config with decoding fixed: one beam, no sampling of its own (a seeded caption is
        drawn by ``SeededSampler``), at most ``max_new_tokens``."""
        import copy

        settings = copy.deepcopy(self.model.generation_config)
        settings.update(do_sample=False, num_beams=1, num_return_sequences=1, max_new_tokens=max_new_tokens,
                        temperature=None, top_p=None, top_k=None, min_p=None, typical_p=None)
        settings.max_length = None
        tokenizer = self.processor.tokenizer
        if settings.pad_token_id is None:
            settings.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else \
                tokenizer.eos_token_id
        return settings


class SeededSampler:
    """A logits processor that samples each row's next token from that row's own ``torch.Generator`` (seeded
    once per caption), then leaves only that token possible, so greedy decoding emits it. The draws of a row
    depend only on its seed and its own logits: a caption is the same in any batch."""

    def __init__(self, seeds: list[int], temperature: float, top_p: float):
        import torch

        self.generators = [torch.Generator(device="cpu").manual_seed(int(seed)) for seed in seeds]
        self.temperature, self.top_p = temperature, top_p

    def __call__(self, input_ids, scores):
        import torch

        probs = torch.softmax(scores.detach().float().cpu() / self.temperature, dim=-1)
        chosen = torch.empty(len(self.generators), dtype=torch.long)
        for row, generator in enumerate(self.generators):
            p = probs[row]
            ordered, order = torch.sort(p, descending=True)
            keep = (torch.cumsum(ordered, 0) - ordered) < self.top_p  # the nucleus; the top token always stays
            nucleus = torch.where(keep, ordered, torch.zeros_like(ordered))
            chosen[row] = order[torch.multinomial(nucleus / nucleus.sum(), 1, generator=generator)[0]]
        out = torch.full_like(scores, float("-inf"))
        out[torch.arange(len(chosen)), chosen.to(scores.device)] = 0.0
        return out


_ROLE = re.compile(r"^(assistant|model)\s*:\s*", re.IGNORECASE)


def clean_caption(text: str, instruction: str = "") -> str:
    """A model's output as a caption: control characters and undecodable bytes as spaces, whitespace collapsed,
    an echo of the instruction or a leading 'assistant:' removed."""
    text = "".join(ch if ch.isprintable() and ch != "\ufffd" else " " for ch in text)
    text = " ".join(text.split())
    echo = " ".join(instruction.split())
    if echo and text.startswith(echo):
        text = text[len(echo):].lstrip(" :")
    return _ROLE.sub("", text).strip()


# -- the text encoder's tokenizer (caption lengths) -------------------------------------------------------------------
def load_text_tokenizer(ref: str):
    """The CLIP tokenizer of the text encoder ``ref`` (``annotate.checks.text_encoder``): 'builtin:tiny-sd', a
    local diffusers folder (its ``tokenizer/``) or a Hub id (its ``tokenizer/``, from the cache when offline); a
    ``ModelLoadError`` naming the field otherwise."""
    from transformers import CLIPTokenizer

    from builder.manifest import BUILTIN_TINY_MODEL

    fix = (f"give '{BUILTIN_TINY_MODEL}', a local diffusers pipeline folder (with tokenizer/) or the Hub id of "
           "the generator these pairs will train")
    if ref == BUILTIN_TINY_MODEL:
        from builder.models.tiny_sd import ensure_tiny_pipeline

        folder = ensure_tiny_pipeline()
    elif ref.startswith("builtin:"):
        raise ModelLoadError(f"{TEXT_ENCODER_FIELD}: '{ref}' is not a built-in model", file=ref, fix=fix)
    elif is_local(ref):
        folder = Path(ref).expanduser()
        if not folder.is_dir():
            raise ModelLoadError(f"{TEXT_ENCODER_FIELD}: '{ref}' does not exist", file=ref, fix=fix)
    else:
        folder = _tokenizer_snapshot(ref, fix)
    source = folder / "tokenizer"
    if not (source / "tokenizer.json").is_file() and not all((source / f).is_file() for f in CLIP_TOKENIZER_FILES):
        raise ModelLoadError(f"{TEXT_ENCODER_FIELD}: '{ref}' has no tokenizer/ folder with a CLIP tokenizer "
                             f"({' and '.join(CLIP_TOKENIZER_FILES)}, or tokenizer.json)", file=ref, fix=fix)
    try:
        return CLIPTokenizer.from_pretrained(str(source), local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelLoadError(f"{TEXT_ENCODER_FIELD}: could not load the tokenizer of '{ref}': {first_line(exc)}",
                             file=ref, fix=fix) from None


def _tokenizer_snapshot(repo: str, fix: str) -> Path:
    """The local snapshot of a Hub repository's ``tokenizer/`` folder (downloaded unless offline)."""
    from huggingface_hub import constants, snapshot_download

    offline = bool(constants.HF_HUB_OFFLINE)
    try:
        return Path(snapshot_download(repo, allow_patterns=["tokenizer/*"], local_files_only=offline))
    except Exception as exc:  # not cached offline, network, gated, bad id: all are the user's to fix
        if offline:
            message, how = _offline_problem(repo)
            raise ModelLoadError(f"{TEXT_ENCODER_FIELD}: {message}", file=repo, fix=how) from None
        raise ModelLoadError(f"{TEXT_ENCODER_FIELD}: could not get the tokenizer of '{repo}' from the Hugging Face "
                             f"Hub: {first_line(exc)}", file=repo, fix=fix) from None


def count_tokens(tokenizer, text: str) -> int:
    """Tokens of ``text`` in a text encoder's tokenizer, start and end tokens included, never truncated."""
    return len(tokenizer(text, add_special_tokens=True, truncation=False, verbose=False)["input_ids"])
