"""Fine-tune the generator on expression image-text pairs (``build-dataset train-generator``), LoRA or full.

The loop of diffusers' ``train_text_to_image(_lora).py``: VAE latents, noise (with optional offset), uniform
timesteps, a target that follows the scheduler's ``prediction_type``, MSE or Min-SNR-gamma weighted, AdamW with
a diffusers learning-rate schedule, gradient accumulation and clipping, accelerate for devices and mixed
precision, peft for LoRA, diffusers' EMAModel for full fine-tuning.

Exact resume: each optimizer step's examples, crops, flips, caption dropout, noise, timesteps and dropout masks
are drawn from (seed, step), and a checkpoint holds the trained weights (safetensors), the optimizer (loaded with
``weights_only=True``), the schedule and the EMA, so a run resumed from a checkpoint ends with the weights of an
uninterrupted run. Outputs in ``output_dir``: the weights (LoRA: ``pytorch_lora_weights.safetensors`` for
``pipe.load_lora_weights``; full: a pipeline folder for ``from_pretrained``), ``loss.jsonl``,
``checkpoints/step-N/``, ``validation/`` (a grid per validation, ``accuracy.jsonl``), ``training_summary.json``
and ``README.md`` (the model card).
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
from builder.synthesis.training.generator_config import GeneratorTrainConfig

ARGS_FILE = "training_args.json"
RESUMABLE = {"checkpoint_every", "checkpoints_kept", "log_every"}
"""train.* fields a resumed run may change (none of them changes the weights), besides the validation section;
train.steps too, under a constant schedule (a decaying schedule is stretched over the step count, so more steps
would change every earlier step)."""


def train_generator(config: GeneratorTrainConfig, source: str = "<config>", progress: bool = True, log=print,
                    trust_remote_code: bool = False) -> dict:
    """Train as ``config`` says (resuming from its output_dir's newest checkpoint); return the summary."""
    import torch
    from accelerate import Accelerator
    from tqdm.auto import tqdm

    from builder.synthesis.training.generator_model import TrainedGenerator
    from builder.synthesis.training.objective import denoising_loss, noisy_latents, target_for
    from builder.synthesis.training.pairs import PairExamples, pair_pixels

    out, settings = config.out, config.train
    start_step = _claim(out, config)
    examples = PairExamples(config.data, config.resolution, source)
    if examples.skipped:
        log(f"skipped training pairs: {dict(examples.skipped)}")
    expert = _expert(config, trust_remote_code)

    accelerator = Accelerator(mixed_precision=settings.mixed_precision)
    model = TrainedGenerator(config, accelerator.device, source, log)
    checkpoint = latest_checkpoint(out, "step")
    if checkpoint is not None:
        model.load_state(checkpoint)
        trim_log(out / "loss.jsonl", "step", start_step)
        trim_log(out / "validation" / "accuracy.jsonl", "step", start_step)
        log(f"resuming from {checkpoint.name}")
    model.prepare(accelerator)
    device, vae, tokenizer = accelerator.device, model.vae, model.tokenizer

    def micro_batch(indices: list[int], step: int, stream: str, dropout: float):
        pixels, captions = [], []
        for n, i in enumerate(indices):
            image, caption = examples[i]
            rng = SampleRng(settings.seed, step, f"{stream}-{n}")
            pixels.append(pair_pixels(image, config.resolution, config.crop, config.random_flip, rng))
            captions.append("" if rng.uniform() < dropout else caption)
        gen = torch.Generator().manual_seed(derive_seed(settings.seed, step, stream))
        with torch.no_grad():
            latents = vae.encode(torch.stack(pixels).to(device, vae.dtype)).latent_dist.sample(generator=gen)
            latents = latents * vae.config.scaling_factor
        ids = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                        return_tensors="pt").input_ids.to(device)
        noisy, noise, timesteps = noisy_latents(model.scheduler, latents, gen, settings.noise_offset)
        return noisy, timesteps, ids, target_for(model.scheduler, latents, noise, timesteps)

    def loss_on(batch, step: int):
        noisy, timesteps, ids, target = batch
        torch.manual_seed(derive_seed(settings.seed, step, "dropout"))  # LoRA dropout masks, per step
        with accelerator.autocast():
            pred = model.predict(noisy, timesteps, ids)
        return denoising_loss(pred, target, model.scheduler, timesteps, settings.snr_gamma)

    eval_batch = micro_batch(list(range(min(settings.eval_examples, len(examples)))), 0, "eval", 0.0)

    def evaluate() -> float:
        with model.evaluating(), torch.no_grad():
            return round(float(loss_on(eval_batch, 0)), 6)

    summary = model.summary_base(examples, expert)
    previous = out / "training_summary.json"
    if checkpoint is not None and previous.is_file():
        summary.update({k: v for k, v in json.loads(previous.read_text()).items() if k.startswith("eval_loss")})
    summary.setdefault("eval_loss_start", evaluate())
    log(f"eval loss at step {start_step}: {evaluate():.5f} ({len(examples)} pairs, {model.trainable_count:,} "
        f"trainable parameters, device {device})")

    def validate(step: int) -> None:
        from builder.synthesis.training.validation import expert_accuracy, render, save_grid

        with model.evaluating():
            rows = render(model.pipeline(), config.validation, config.resolution)
        save_grid(rows, config.validation, out / "validation" / f"step-{step:07d}.png")
        line = {"step": step, "grid": f"validation/step-{step:07d}.png"}
        if expert is not None:
            line.update(expert_accuracy(expert["model"], rows, config.validation))
            log(f"validation at step {step}: {expert['name']} recognises {line['mean']:.0%} of the expressions")
        with open(out / "validation" / "accuracy.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps(line) + "\n")
        summary["validation"] = line

    started = time.perf_counter()
    every = config.validation.every
    bar = tqdm(range(start_step, settings.steps), initial=start_step, total=settings.steps, unit="step",
               desc="train-generator", disable=not progress, dynamic_ncols=True)
    with open(out / "loss.jsonl", "a", encoding="utf-8") as loss_log:
        for step in bar:
            total = 0.0
            for micro in range(settings.gradient_accumulation):
                rng = SampleRng(settings.seed, step, f"batch-{micro}")
                indices = [min(int(rng.uniform() * len(examples)), len(examples) - 1)
                           for _ in range(settings.batch_size)]
                loss = loss_on(micro_batch(indices, step, f"train-{micro}", settings.caption_dropout), step)
                accelerator.backward(loss / settings.gradient_accumulation)
                total += loss.item() / settings.gradient_accumulation
            model.optimizer_step(accelerator)
            done = step + 1
            bar.set_postfix(loss=f"{total:.4f}")
            if done % settings.log_every == 0 or done == settings.steps:
                loss_log.write(json.dumps({"step": done, "loss": round(total, 6), "lr": model.learning_rate,
                                           "seconds": round(time.perf_counter() - started, 3)}) + "\n")
                loss_log.flush()
            if (every and done % every == 0) or done == settings.steps:
                validate(done)
            if done % settings.checkpoint_every == 0 or done == settings.steps:
                summary[f"eval_loss_step_{done}"] = evaluate()
                save_checkpoint(out, "step", done, model.save_state, keep=settings.checkpoints_kept)
                _write_summary(out, summary)

    summary.update(eval_loss_end=evaluate(), steps=settings.steps,
                   seconds_this_run=round(time.perf_counter() - started, 1))
    model.save_result(out)
    _write_summary(out, summary)
    from builder.synthesis.training.model_card import write_model_card

    write_model_card(out, config, summary)
    log(f"eval loss {summary['eval_loss_start']:.5f} -> {summary['eval_loss_end']:.5f}; "
        f"{'LoRA weights' if config.method == 'lora' else 'pipeline'} saved to {out}")
    return summary


def _expert(config: GeneratorTrainConfig, trust_remote_code: bool) -> dict | None:
    """The validation expert (loaded once) with its name and sha256, or None."""
    name = config.validation.expert
    if name is None:
        return None
    from builder.models.store import load_fer_classifier, model_sha256

    return {"name": name, "sha256": model_sha256(name),
            "model": load_fer_classifier(name, trust_remote_code=trust_remote_code)}


def _write_summary(out: Path, summary: dict) -> None:
    tmp = out / ".training_summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2) + "\n")
    tmp.replace(out / "training_summary.json")


def _claim(out: Path, config: GeneratorTrainConfig) -> int:
    """Record the config in ``output_dir``, or check that a resumed run changes only what it may; the step to
    start at."""
    out.mkdir(parents=True, exist_ok=True)
    args = out / ARGS_FILE
    current = config.model_dump(mode="json")
    if args.exists():
        constant = config.train.lr_scheduler in ("constant", "constant_with_warmup")
        refused = [c for c in config_changes(json.loads(args.read_text()), current,
                                             RESUMABLE | ({"steps"} if constant else set()))
                   if c != "validation"]
        if refused:
            why = (" (train.steps may change only under a constant schedule: lr_scheduler "
                   f"'{config.train.lr_scheduler}' spreads over the step count)" if "train.steps" in refused else "")
            raise OutputDirError(f"'{out}' holds a training run with a different config (changed: "
                                 f"{', '.join(refused)}){why}",
                                 fix="use a new output_dir, or restore those settings to resume; a resume may change "
                                 "train.checkpoint_every, checkpoints_kept, log_every, the validation section and, "
                                 "under a constant schedule, train.steps")
    record_config(out, ARGS_FILE, current)
    return checkpoint_number(latest_checkpoint(out, "step"), "step")
