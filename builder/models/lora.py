"""LoRA weights on the generator (manifest ``generator.lora``): checked as data, then loaded through diffusers.

A LoRA folder is what ``StableDiffusionPipeline.save_lora_weights`` writes (diffusers' LoRA training scripts,
``build-dataset train-generator``): ``pytorch_lora_weights.safetensors``, the peft config of each component in
its header, and optionally the trainer's ``training_summary.json``. Three rules keep it data and keep a wrong
LoRA from passing silently:

- only that safetensors file is read. A folder with only pickled weights (``.bin``, ``.pt``, ``.ckpt``) is
  refused, and diffusers gets the weight name and ``use_safetensors=True``, so it cannot fall back to a pickle;
- the header (names and shapes, no weights) is compared with the loaded pipeline before diffusers sees the file:
  each ``lora.down``/``lora.up`` (or ``lora_A``/``lora_B``) pair must name a Linear or Conv2d module of the UNet
  or the text encoder whose input and output sizes it fits. diffusers only warns about keys it cannot place,
  and a build would then make the base model's images under the LoRA's name;
- ``reference_problems`` (no torch) is what ``validate``, ``--dry-run`` and a build check before anything loads.

``apply_loras`` loads LoRA ``i`` as adapter ``lora<i>``, weights them with ``set_adapters`` and, with ``fuse``,
merges them into the base weights (``fuse_lora``, then ``unload_lora_weights``, which keeps the merged weights
and drops the peft layers). No torch at import.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field

from builder.core.errors import ModelLoadError, UserError
from builder.models.files import (
    PICKLE_PROBLEM,
    ConfigPart,
    first_line,
    read_json_config,
    safetensors_problem,
    safetensors_shapes,
)

WEIGHTS_NAME = "pytorch_lora_weights.safetensors"
SUMMARY_NAME = "training_summary.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
COMPONENTS = ("unet", "text_encoder")
"""The pipeline components a Stable Diffusion 1.x/2.x LoRA may adapt (the first part of each key)."""
ROLES = ((".lora.down.weight", "down"), (".lora.up.weight", "up"),
         (".lora_linear_layer.down.weight", "down"), (".lora_linear_layer.up.weight", "up"),
         (".lora_A.weight", "down"), (".lora_B.weight", "up"))
"""Key endings of the diffusers layout (``convert_state_dict_to_diffusers``: ``lora.down``/``lora.up`` in a UNet,
``lora_linear_layer`` in a text encoder) and of peft's own (``lora_A``/``lora_B``), with the matrix each holds."""
LAYOUT_FIX = ("save the LoRA with StableDiffusionPipeline.save_lora_weights (as diffusers' LoRA training scripts "
              "and `build-dataset train-generator` do)")
ANOTHER_ARCHITECTURE = "the LoRA was made for another architecture"
ARCHITECTURE_FIX = ("use a LoRA made for a Stable Diffusion 1.x/2.x generator, the one generator.model names "
                    "(`build-dataset train-generator` makes one)")
COPY_FIX = ("copy the LoRA folder again (an interrupted copy or download leaves a truncated file), or save it again "
            "with StableDiffusionPipeline.save_lora_weights")
CONVERT_FIX = ("convert it where you trust it: safetensors.torch.save_file(torch.load(FILE, weights_only=True), "
               f"'DIR/{WEIGHTS_NAME}'), or save it again with StableDiffusionPipeline.save_lora_weights "
               "(safetensors is its default)")


def field_name(index: int) -> str:
    """The manifest field of LoRA ``index``, as messages name it."""
    return f"generator.lora[{index}].path"


def architecture_fix(model: str) -> str:
    """The fix for a LoRA made for another generator than ``model``."""
    return (f"use a LoRA trained on this generator ('{model}'), e.g. `build-dataset train-generator` with "
            f"base_model: {model}, or set generator.model to the model the LoRA was trained on")


# -- the folder, cheaply (no torch) -----------------------------------------------------------------------------------
class ValidationExpert(ConfigPart):
    """The FER model the trainer scored validation images with (the LoRA was selected by its accuracy)."""

    name: str = Field(min_length=1)
    sha256: str | None = None


class TrainingSummary(ConfigPart):
    """The parts of a trainer's ``training_summary.json`` a build reads; other keys are the trainer's."""

    base_model: str | None = None
    validation_expert: ValidationExpert | None = None


def reference_problems(ref: str) -> list[tuple[str, str]]:
    """(message, fix) for each reason the folder ``ref`` is not a usable LoRA folder; [] when it is. Reads the
    safetensors header and the training summary, never a weight; ``builder.references`` reports them under the
    field."""
    folder = Path(ref).expanduser()
    if not folder.is_dir():
        what = "is a file, not a folder" if folder.is_file() else "does not exist"
        return [(f"'{ref}' {what}", f"give the folder StableDiffusionPipeline.save_lora_weights wrote (with "
                                    f"{WEIGHTS_NAME})")]
    weights = folder / WEIGHTS_NAME
    if not weights.is_file():
        return [_no_weights(ref, folder)]
    problems = []
    problem = safetensors_problem(weights)
    if problem:
        problems.append((f"{weights} {problem}", CONVERT_FIX if problem == PICKLE_PROBLEM else COPY_FIX))
    else:
        problem = layout_problem(safetensors_shapes(weights))
        if problem:
            message, fix = problem
            problems.append((f"{weights}: {message}", fix))
    try:
        read_training_summary(folder)
    except ModelLoadError as exc:
        problems.append((f"{exc.file}: {exc.message}", exc.fix))
    return problems


def _no_weights(ref: str, folder: Path) -> tuple[str, str]:
    """Why a folder without ``WEIGHTS_NAME`` is refused: it holds only pickles, other safetensors, or nothing."""
    files = sorted(p.name for p in folder.iterdir() if p.is_file())
    pickles = [n for n in files if n.lower().endswith(PICKLE_SUFFIXES)]
    others = [n for n in files if n.endswith(".safetensors")]
    if pickles and not others:
        return (f"'{ref}' holds only pickled weights ({', '.join(pickles)}), no {WEIGHTS_NAME}: pickles are refused "
                "because loading one can run code", CONVERT_FIX)
    if others:
        return (f"'{ref}' has no {WEIGHTS_NAME} (it holds {', '.join(others)})",
                f"if that file is a diffusers LoRA, rename it to {WEIGHTS_NAME}; otherwise {LAYOUT_FIX}")
    return f"'{ref}' has no {WEIGHTS_NAME}", "give the folder StableDiffusionPipeline.save_lora_weights wrote"


def read_training_summary(folder: str | Path) -> TrainingSummary | None:
    """The folder's ``training_summary.json`` (base model, validation expert), None when there is none; a
    ``ModelLoadError`` naming the file and field when it is not a valid summary."""
    path = Path(folder).expanduser() / SUMMARY_NAME
    if not path.is_file():
        return None
    return read_json_config(path, TrainingSummary, "training summary",
                            "write it again with the trainer, or delete it (a build does not need it)")


# -- the keys: layout from the header, fit against the pipeline --------------------------------------------------------
@dataclass(frozen=True)
class LoraKey:
    """One tensor of a LoRA file: which component and module it adapts, and whether it is the down or up matrix."""

    key: str
    component: str
    module: str
    role: str
    shape: tuple[int, ...]

    def shown(self) -> str:
        return f"'{self.key}' (shape {list(self.shape)})"


def parse_key(key: str, shape: tuple[int, ...]) -> LoraKey | None:
    """``key`` split into component, module path and role; None when it is not in the diffusers/peft layout."""
    component, _, rest = key.partition(".")
    for suffix, role in ROLES:
        if rest.endswith(suffix) and len(rest) > len(suffix):
            return LoraKey(key, component, rest[: -len(suffix)], role, tuple(shape))
    return None


def layout_problem(shapes: dict[str, tuple[int, ...]]) -> tuple[str, str] | None:
    """(message, fix) for what is wrong with a LoRA file's keys (header only): a key outside the layout, a
    component a Stable Diffusion 1.x/2.x pipeline lacks, a down matrix without its up matrix, ranks or
    dimensions that disagree; None when nothing is."""
    if not shapes:
        return "holds no tensors", LAYOUT_FIX
    pairs: dict[tuple[str, str], dict[str, LoraKey]] = {}
    for key in sorted(shapes):
        parsed = parse_key(key, shapes[key])
        if parsed is None:
            return (f"key '{key}' is not in the diffusers/peft LoRA layout (<component>.<module>.lora.down.weight "
                    "and .lora.up.weight, or .lora_A.weight and .lora_B.weight)", LAYOUT_FIX)
        if parsed.component not in COMPONENTS:
            return (f"key {parsed.shown()} adapts component '{parsed.component}', which a Stable Diffusion 1.x/2.x "
                    f"pipeline does not have ({', '.join(COMPONENTS)}): {ANOTHER_ARCHITECTURE}", ARCHITECTURE_FIX)
        if len(parsed.shape) not in (2, 4):
            return (f"key {parsed.shown()} is neither a Linear (2 dimensions) nor a Conv2d (4 dimensions) LoRA "
                    "matrix", LAYOUT_FIX)
        pairs.setdefault((parsed.component, parsed.module), {})[parsed.role] = parsed
    return _pair_problem(pairs)


def _pair_problem(pairs: dict[tuple[str, str], dict[str, LoraKey]]) -> tuple[str, str] | None:
    """A module with only one of its two matrices, or two matrices of different ranks or dimensions."""
    for pair in pairs.values():
        if set(pair) != {"down", "up"}:
            (alone,) = pair.values()
            other = "up" if alone.role == "down" else "down"
            return f"key {alone.shown()} has no {other} matrix for module '{alone.module}'", LAYOUT_FIX
        down, up = pair["down"], pair["up"]
        if down.shape[0] != up.shape[1] or len(down.shape) != len(up.shape):
            return (f"keys {down.shown()} and {up.shown()} do not form one LoRA: the down matrix has rank "
                    f"{down.shape[0]}, the up matrix {up.shape[1]}", LAYOUT_FIX)
    return None


def fit_problem(pipe, shapes: dict[str, tuple[int, ...]]) -> str | None:
    """The first key (in sorted order) that does not fit the pipeline: its module is missing from the component,
    is not a Linear or Conv2d, or has other input/output sizes than the LoRA matrix. Needs a valid layout."""
    for key in sorted(shapes):
        parsed = parse_key(key, shapes[key])
        module = _submodule(getattr(pipe, parsed.component), parsed.module)
        if module is None:
            return (f"key {parsed.shown()} names module '{parsed.module}', which the pipeline's {parsed.component} "
                    "does not have")
        problem = _shape_problem(parsed, module)
        if problem:
            return problem
    return None


def _submodule(model, path: str):
    """``model``'s module at ``path``; a text encoder's also with or without transformers' ``text_model.`` prefix
    (older and newer CLIP layouts). None when there is none."""
    candidates = [path, path.removeprefix("text_model."), f"text_model.{path}"]
    for candidate in dict.fromkeys(candidates):
        try:
            return model.get_submodule(candidate)
        except AttributeError:
            continue
    return None


def _shape_problem(parsed: LoraKey, module) -> str | None:
    """Whether a down (rank x in) or up (out x rank) matrix fits ``module`` (a Linear, or a Conv2d)."""
    from torch import nn

    if isinstance(module, nn.Linear):
        dims, size_in, size_out, what = 2, module.in_features, module.out_features, "Linear"
    elif isinstance(module, nn.Conv2d):
        dims, size_in, size_out, what = 4, module.in_channels, module.out_channels, "Conv2d"
    else:
        return (f"key {parsed.shown()} adapts '{parsed.module}', a {type(module).__name__}, which a LoRA of this "
                "layout cannot adapt (only Linear and Conv2d)")
    shape = parsed.shape
    fits = len(shape) == dims and (shape[1] == size_in if parsed.role == "down" else shape[0] == size_out)
    if fits:
        return None
    needed = ["rank", size_in] if parsed.role == "down" else [size_out, "rank"]
    needed += ["..."] * (dims - 2)
    return (f"key {parsed.shown()} does not fit {parsed.component} module '{parsed.module}', a {what} from "
            f"{size_in} to {size_out} features, whose {parsed.role} matrix has shape "
            f"[{', '.join(str(n) for n in needed)}]")


def check_fits(pipe, index: int, path: str, model: str) -> Path:
    """Refuse LoRA ``index`` (folder ``path``) unless it is a safetensors LoRA whose every key fits the loaded
    ``pipe`` (of ``generator.model`` ``model``): a ``ModelLoadError`` naming the field, the file, the first
    mismatching key with its shape, and the fix. Returns the weights file."""
    field = field_name(index)
    found = reference_problems(path)
    if found:
        message, fix = found[0]
        raise ModelLoadError(f"{field}: {message}", file=str(Path(path).expanduser()), fix=fix)
    weights = Path(path).expanduser() / WEIGHTS_NAME
    shapes = safetensors_shapes(weights)
    problem = fit_problem(pipe, shapes)
    if problem:
        raise ModelLoadError(f"{field}: {problem}: {ANOTHER_ARCHITECTURE}", file=str(weights),
                             fix=architecture_fix(model))
    return weights


# -- loading -----------------------------------------------------------------------------------------------------------
def apply_loras(pipe, specs, fuse: bool, model: str) -> list[dict[str, Any]]:
    """Check every LoRA of ``specs`` (manifest ``LoRASpec``s) against ``pipe``, then load them as adapters
    ``lora0``, ``lora1``, ... with their scales, and with ``fuse`` merge them into the base weights. Returns
    each LoRA's provenance: path, sha256 of its weights file, scale, and the base model and validation expert
    its training summary names (None without one)."""
    from builder.models.diffusion import file_sha256

    files = [check_fits(pipe, i, spec.path, model) for i, spec in enumerate(specs)]
    names = [f"lora{i}" for i in range(len(specs))]
    with _quiet_libraries():
        for i, (weights, name) in enumerate(zip(files, names)):
            _load(pipe, i, weights, name, model)
        pipe.set_adapters(names, [float(spec.scale) for spec in specs])
        if fuse:
            pipe.fuse_lora(adapter_names=names, lora_scale=1.0)  # 1.0: the scales set_adapters gave stay as they are
            pipe.unload_lora_weights()  # drops the peft layers; the merged base weights stay
    for component in (pipe.unet, pipe.text_encoder):
        component.requires_grad_(False)  # frozen like the rest: guidance differentiates inputs, never weights
    return [provenance(spec, weights, file_sha256(weights)) for spec, weights in zip(specs, files)]


def _load(pipe, index: int, weights: Path, name: str, model: str) -> None:
    """``load_lora_weights`` of one checked file: the weight name and ``use_safetensors`` are explicit, so
    diffusers reads this file and nothing else (no pickle fallback, no Hub)."""
    try:
        pipe.load_lora_weights(str(weights.parent), weight_name=WEIGHTS_NAME, adapter_name=name,
                               use_safetensors=True, local_files_only=True)
    except (ValueError, RuntimeError, KeyError, TypeError, OSError) as exc:
        raise ModelLoadError(f"{field_name(index)}: diffusers could not load the LoRA ({first_line(exc)})",
                             file=str(weights), fix=f"{LAYOUT_FIX}; {architecture_fix(model)}") from None


@contextmanager
def _quiet_libraries():
    """diffusers' and transformers' loading reports at error level while LoRAs load: their warnings about keys
    they cannot place are what ``check_fits`` has already ruled out, and their per-parameter tables would bury
    the tool's own messages."""
    import diffusers
    import transformers

    levels = diffusers.utils.logging.get_verbosity(), transformers.utils.logging.get_verbosity()
    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.set_verbosity_error()
    try:
        yield
    finally:
        diffusers.utils.logging.set_verbosity(levels[0])
        transformers.utils.logging.set_verbosity(levels[1])


def provenance(spec, weights: Path, sha256: str) -> dict[str, Any]:
    """One LoRA's record in the generation stage's meta (``stats.json`` ``lora``): a changed file or summary on
    resume makes the stage's set-up differ from the finished shards, and the build refuses to mix them."""
    summary = read_training_summary(weights.parent)
    expert = summary.validation_expert if summary else None
    return {"path": str(spec.path), "sha256": sha256, "scale": float(spec.scale),
            "base_model": summary.base_model if summary else None,
            "validation_expert": {"name": expert.name, "sha256": expert.sha256} if expert else None}


# -- warnings: another base model, a validation expert that guides or labels the build ---------------------------------
def base_model_warning(index: int, lora: dict, model: str) -> str | None:
    """A warning when LoRA ``index`` (its provenance) was trained on another base model than ``model``."""
    base = lora.get("base_model")
    if not base or _same_name(base, model):
        return None
    return (f"{field_name(index)} '{lora['path']}' was trained on '{base}' (base_model in its {SUMMARY_NAME}), but "
            f"generator.model is '{model}': its weight updates were fitted to another model, so expect weaker or "
            "broken images (use the LoRA with its base model)")


def selection_warnings(index: int, lora: dict, models: list[dict]) -> list[str]:
    """Warnings when the expert LoRA ``index`` was selected with (its summary's ``validation_expert``) is one of
    ``models``: dicts of role, where, model and sha256 (or None) of each model that guides or labels the build."""
    expert = lora.get("validation_expert") or {}
    out = []
    for used in models:
        how = []
        if expert.get("sha256") and used.get("sha256") and expert["sha256"] == used["sha256"]:
            how.append("sha256")
        if expert.get("name") and used.get("model") and _same_name(expert["name"], used["model"]):
            how.append("model id")
        if how:
            out.append(f"{field_name(index)} '{lora['path']}' was selected with the FER model '{expert['name']}' "
                       f"(validation_expert in its {SUMMARY_NAME}), which is the model that {used['role']} of this "
                       f"build ({used['where']}: {used['model']}, matched by {', '.join(how)}); the LoRA was kept "
                       "for images that model recognises, so its agreement with this build's labels is not an "
                       "independent check (select LoRAs with another expert, or guide and label with other models)")
    return out


def manifest_models(manifest) -> list[dict]:
    """Role, where, model and sha256 (when it can be computed here) of the guide and each labelling expert of
    ``manifest``: the models a LoRA's validation expert must not be."""
    out = []
    g = manifest.generator
    if g is not None and g.guidance is not None:
        out.append({"role": "guides the generation", "where": "generator.guidance.classifier",
                    "model": g.guidance.classifier, "sha256": _sha256_or_none(g.guidance.classifier)})
    if manifest.labelling is not None:
        for i, expert in enumerate(manifest.labelling.experts):
            out.append({"role": "labels the data", "where": f"labelling.experts[{i}].model", "model": expert.model,
                        "sha256": _sha256_or_none(expert.model)})
    return out


def lora_warnings(manifest) -> list[str]:
    """Every warning about the LoRAs of ``manifest`` (read from their folders' training summaries): another base
    model than ``generator.model``, a validation expert that guides or labels this build."""
    g = manifest.generator
    if g is None or not g.lora:
        return []
    models = manifest_models(manifest)
    out = []
    for i, spec in enumerate(g.lora):
        try:
            summary = read_training_summary(spec.path)
        except UserError:
            continue  # the reference checks report it
        if summary is None:
            continue
        expert = summary.validation_expert
        lora = {"path": spec.path, "base_model": summary.base_model,
                "validation_expert": expert.model_dump() if expert else None}
        out += [w for w in [base_model_warning(i, lora, g.model)] if w]
        out += selection_warnings(i, lora, models)
    return out


def _sha256_or_none(ref: str) -> str | None:
    """``model_sha256`` of a guide or expert reference, or None when it cannot be computed here (not fetched)."""
    from builder.models.store import model_sha256

    try:
        return model_sha256(ref)
    except (OSError, UserError, ValueError):
        return None


def _same_name(a: str, b: str) -> bool:
    """The same model reference: equal as written, or the same existing path."""
    if a == b:
        return True
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    return pa.exists() and pb.exists() and pa.resolve() == pb.resolve()
