"""Train an AU adapter on a frozen Stable Diffusion generator (``build-dataset train-au-adapter``).

Standard noise-prediction loss; only the adapter's parameters train. Each
step's batch, caption dropout, noise and timesteps are drawn from (seed, step),
so a run resumed from a checkpoint continues exactly as an uninterrupted run.
The evaluation loss is measured on a fixed batch with fixed noise, so it can be
compared across checkpoints. Outputs in ``output_dir``: the adapter
(``au_adapter.safetensors`` + config), ``loss.jsonl``, ``checkpoints/step-N/``
and ``training_summary.json``.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from builder.core.checkpoints import (
    checkpoint_number,
    config_changes,
    latest_checkpoint,
    record_config,
    save_checkpoint,
    trim_log,
)
from builder.core.errors import OutputDirError
from builder.core.seeding import SampleRng, derive_seed
from builder.manifest.au_sets import AU_SETS
from builder.synthesis.training.config import TrainConfig

ARGS_FILE = "training_args.json"
RESUMABLE_CHANGES = {"steps", "checkpoint_every", "log_every"}  # train.* fields a resumed run may change


def train_au_adapter(config: TrainConfig, source: str = "<config>", progress: bool = True, log=print) -> dict:
    import torch
    import torch.nn.functional as F
    from accelerate import Accelerator
    from diffusers import DDPMScheduler, StableDiffusionPipeline
    from tqdm.auto import tqdm

    from builder.manifest import Generator
    from builder.models.diffusion import quiet_loading, resolve_checkpoint
    from builder.models.imaging import square_pixels
    from builder.synthesis.au_adapter import AUAdapter
    from builder.synthesis.training.data import TrainExamples
    from builder.synthesis.training.objective import check_prediction_type, noisy_latents, target_for

    out = config.out
    settings = config.train
    start_step = _claim(out, config)
    au_names = AU_SETS[config.au_set]
    examples = TrainExamples(config.data, au_names, source)
    if examples.skipped:
        log(f"skipped training examples: {dict(examples.skipped)}")
    if examples.unmeasured:
        log("AUs left empty by the data's detector, trained as 0 (set data.missing_au: skip to leave such rows out): "
            + ", ".join(f"{name} ({n} rows)" for name, n in examples.unmeasured.items()))

    accelerator = Accelerator(mixed_precision=settings.mixed_precision)
    device = accelerator.device
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(settings.mixed_precision, torch.float32)
    quiet_loading()
    folder, _ = resolve_checkpoint(Generator(model=config.base_model, revision=config.revision))
    pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, feature_extractor=None,
                                                   requires_safety_checker=False, local_files_only=True)
    loras: list[dict] = []
    if config.base_lora:  # train over the fine-tuned generator the builds will use
        from builder.models.lora import apply_loras

        loras = apply_loras(pipe, config.base_lora, fuse=True, model=config.base_model)
        log("merged into the base model: " + ", ".join(f"{lora['path']} (scale {lora['scale']})" for lora in loras))
    unet, vae, text_encoder, tokenizer = pipe.unet, pipe.vae, pipe.text_encoder, pipe.tokenizer
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    check_prediction_type(noise_scheduler, source)
    for module in (unet, vae, text_encoder):
        module.requires_grad_(False).eval().to(device, dtype=weight_dtype)

    checkpoint = latest_checkpoint(out, "step")
    if checkpoint is not None:
        adapter = AUAdapter.from_pretrained(checkpoint)
        trim_log(out / "loss.jsonl", "step", start_step)
        log(f"resuming from {checkpoint.name}")
    else:
        adapter = AUAdapter.for_unet(unet, list(au_names), config.num_tokens, config.hidden_dim,
                                     tokenizer.model_max_length, seed=settings.seed)
    adapter.to(device, dtype=torch.float32).train()
    adapter.attach(unet)
    optimizer = torch.optim.AdamW(adapter.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay)
    if checkpoint is not None:
        optimizer.load_state_dict(torch.load(checkpoint / "optimizer.pt", map_location="cpu", weights_only=True))
    adapter, optimizer = accelerator.prepare(adapter, optimizer)
    plain_adapter = accelerator.unwrap_model(adapter)

    def batch_tensors(indices: list[int], step: int, stream: str, dropout: float):
        rng = SampleRng(settings.seed, step, f"{stream}-dropout")
        images, captions, aus = [], [], []
        for i in indices:
            image, caption, au = examples[i]
            images.append(square_pixels(image, config.resolution) * 2 - 1)
            captions.append("" if rng.uniform() < dropout else caption)
            aus.append(au)
        gen = torch.Generator().manual_seed(derive_seed(settings.seed, step, stream))
        pixels = torch.stack(images).to(device, weight_dtype)
        with torch.no_grad():
            latents = vae.encode(pixels).latent_dist.sample(generator=gen)
            latents = latents * vae.config.scaling_factor
            ids = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length,
                            truncation=True, return_tensors="pt").input_ids.to(device)
            text = text_encoder(ids)[0]
        noisy, noise, timesteps = noisy_latents(noise_scheduler, latents, gen)
        target = target_for(noise_scheduler, latents, noise, timesteps)
        return noisy, timesteps, text, torch.tensor(aus, dtype=torch.float32), target

    def loss_on(batch) -> torch.Tensor:
        noisy, timesteps, text, au, target = batch
        with accelerator.autocast():
            cond = plain_adapter.condition(text, au)
            pred = unet(noisy, timesteps, encoder_hidden_states=cond.to(weight_dtype)).sample
        return F.mse_loss(pred.float(), target.float())

    eval_batch = batch_tensors(list(range(min(settings.eval_examples, len(examples)))), 0, "eval", 0.0)

    def evaluate() -> float:
        plain_adapter.eval()
        with torch.no_grad():
            value = float(loss_on(eval_batch))
        plain_adapter.train()
        return value

    summary_path = out / "training_summary.json"
    summary = json.loads(summary_path.read_text()) if checkpoint is not None and summary_path.exists() else {}
    if "eval_loss_start" not in summary:
        summary["eval_loss_start"] = evaluate()
    log(f"eval loss at step {start_step}: {evaluate():.5f} ({len(examples)} examples, device {device})")

    started = time.perf_counter()
    bar = tqdm(range(start_step, settings.steps), initial=start_step, total=settings.steps, unit="step",
               desc="train-au-adapter", disable=not progress, dynamic_ncols=True)
    with open(out / "loss.jsonl", "a", encoding="utf-8") as loss_log:
        for step in bar:
            rng = SampleRng(settings.seed, step, "batch")
            indices = [min(int(rng.uniform() * len(examples)), len(examples) - 1) for _ in range(settings.batch_size)]
            loss = loss_on(batch_tensors(indices, step, "train", settings.caption_dropout))
            accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            done = step + 1
            bar.set_postfix(loss=f"{loss.item():.4f}")
            if done % settings.log_every == 0 or done == settings.steps:
                loss_log.write(json.dumps({"step": done, "loss": round(loss.item(), 6),
                                           "seconds": round(time.perf_counter() - started, 3)}) + "\n")
                loss_log.flush()
            if done % settings.checkpoint_every == 0 or done == settings.steps:
                summary[f"eval_loss_step_{done}"] = evaluate()
                _save_checkpoint(out, done, plain_adapter, optimizer, summary)

    summary["eval_loss_end"] = evaluate()
    summary["steps"] = settings.steps
    summary["base_lora"] = [{k: lora[k] for k in ("path", "sha256", "scale")} for lora in loras]
    plain_adapter.save_pretrained(out)
    summary_path.write_text(json.dumps(summary, indent=2) + "\n")
    log(f"eval loss {summary['eval_loss_start']:.5f} -> {summary['eval_loss_end']:.5f}; adapter saved to {out}")
    return summary


def _claim(out: Path, config: TrainConfig) -> int:
    """Record the config in ``output_dir`` or check a resumed run matches it; return the step to start at."""
    out.mkdir(parents=True, exist_ok=True)
    args = out / ARGS_FILE
    current = config.model_dump(mode="json")
    if args.exists():
        changed = config_changes(json.loads(args.read_text()), current, RESUMABLE_CHANGES)
        if changed:
            raise OutputDirError(f"'{out}' holds a training run with a different config (changed: {', '.join(changed)})",
                                 fix="use a new output_dir; only train.steps, checkpoint_every and log_every may change on resume")
    record_config(out, ARGS_FILE, current)
    return checkpoint_number(latest_checkpoint(out, "step"), "step")


def _save_checkpoint(out: Path, step: int, adapter, optimizer, summary: dict) -> None:
    import torch

    def write(folder: Path) -> None:
        adapter.save_pretrained(folder)
        torch.save(optimizer.state_dict(), folder / "optimizer.pt")

    save_checkpoint(out, "step", step, write)
    (out / "training_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
