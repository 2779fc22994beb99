"""The generator being fine-tuned: the base pipeline's parts, what trains (LoRA layers through peft, or the whole
UNet with an EMA), the optimiser and schedule, and their checkpoints and final outputs.

Checkpoints hold only data: the trainable weights and the EMA as safetensors, the AdamW state by ``torch.save``
(read back with ``weights_only=True``), the schedule's counters as JSON.
"""
from __future__ import annotations

import contextlib
import json
from pathlib import Path

from builder.core.errors import ModelLoadError, OutputDirError, UserError
from builder.synthesis.training.generator_config import GeneratorTrainConfig

TRAINABLE_FILE = "trainable.safetensors"
EMA_FILE = "ema.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
SCHEDULE_FILE = "schedule.json"
LORA_FILE = "pytorch_lora_weights.safetensors"


class TrainedGenerator:
    """Loads ``config.base_model`` and makes the configured part of it trainable."""

    def __init__(self, config: GeneratorTrainConfig, device, source: str, log=print):
        import torch

        from builder.manifest import Generator
        from builder.models.diffusion import load_pipeline
        from builder.synthesis.training.objective import check_prediction_type

        self.config, self.log, self.source = config, log, source
        mixed = config.train.mixed_precision
        self.weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(mixed, torch.float32)
        try:
            pipe, _, self.provenance = load_pipeline(Generator(model=config.base_model, revision=config.revision,
                                                               device="cpu", dtype="float32"))
        except ModelLoadError as exc:  # the loader speaks of the manifest's generator.model
            raise ModelLoadError(exc.message.replace("generator.model", "base_model"), file=source,
                                 fix=(exc.fix or "").replace("generator.model", "base_model") or None) from None
        self.base = pipe
        self.unet, self.vae, self.text_encoder, self.tokenizer = pipe.unet, pipe.vae, pipe.text_encoder, pipe.tokenizer
        from diffusers import DDPMScheduler

        self.scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
        check_prediction_type(self.scheduler, source)
        self.ema = None
        self.trained = self._make_trainable(device)
        params = [p for module in self.trained for p in module.parameters() if p.requires_grad]
        self.trainable_count = sum(p.numel() for p in params)
        s = config.train
        self.optimizer = torch.optim.AdamW(params, lr=s.learning_rate, weight_decay=s.weight_decay)
        from diffusers.optimization import get_scheduler

        self.lr_schedule = get_scheduler(s.lr_scheduler, optimizer=self.optimizer, num_warmup_steps=s.lr_warmup_steps,
                                         num_training_steps=s.steps)

    # -- set-up ------------------------------------------------------------------------------------------------------
    def _make_trainable(self, device) -> list:
        import torch

        config, dtype = self.config, self.weight_dtype
        for module in (self.unet, self.vae, self.text_encoder):
            module.requires_grad_(False)
        self.vae.to(device, dtype=dtype)
        if config.method == "lora":
            lora = config.lora
            self.unet.to(device, dtype=dtype)
            torch.manual_seed(config.train.seed)  # peft's gaussian init of the LoRA down weights
            self.unet.add_adapter(self._lora_config(self.unet, lora.target_modules, "target_modules", "unet"))
            trained = [self.unet]
            self.text_encoder.to(device, dtype=dtype)
            if lora.text_encoder:
                self.text_encoder.add_adapter(self._lora_config(self.text_encoder, lora.text_encoder_target_modules,
                                                                "text_encoder_target_modules", "text encoder"))
                trained.append(self.text_encoder)
            for module in trained:  # trained weights in float32 under mixed precision, as diffusers' script
                for p in module.parameters():
                    if p.requires_grad:
                        p.data = p.data.float()
        else:
            self.text_encoder.to(device, dtype=dtype)
            self.unet.to(device, dtype=torch.float32).requires_grad_(True)
            trained = [self.unet]
            if config.ema.enabled:
                from diffusers.training_utils import EMAModel

                self.ema = EMAModel(self.unet.parameters(), decay=config.ema.decay, use_ema_warmup=True)
        if config.train.gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()
        for module in trained:
            module.train()
        return trained

    def _lora_config(self, module, targets: list[str], field: str, where: str):
        """peft's LoraConfig for ``targets`` of ``module``; a name that matches none of its modules is an error
        (peft would fail later with less to go on)."""
        from peft import LoraConfig

        lora = self.config.lora
        names = [name for name, _ in module.named_modules()]
        missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
        if missing:
            leaves = sorted({n.rsplit(".", 1)[-1] for n, m in module.named_modules() if type(m).__name__ == "Linear"})
            raise UserError(f"lora.{field}: {', '.join(missing)} name no module of the base model's {where}",
                            file=self.source, fix=f"use its linear layers' names, e.g. {', '.join(leaves[:8])}")
        return LoraConfig(r=lora.rank, lora_alpha=lora.alpha or lora.rank, lora_dropout=lora.dropout,
                          init_lora_weights="gaussian", target_modules=targets)

    def prepare(self, accelerator) -> None:
        """Hand the trained modules and the optimiser to accelerate (devices, mixed precision)."""
        *modules, self.optimizer = accelerator.prepare(*self.trained, self.optimizer)
        self.wrapped = modules
        self.accelerator = accelerator

    # -- training ----------------------------------------------------------------------------------------------------
    def predict(self, noisy, timesteps, ids):
        unet, text_encoder = self.wrapped[0], self.wrapped[1] if len(self.wrapped) > 1 else self.text_encoder
        hidden = text_encoder(ids)[0]
        return unet(noisy.to(self.unet.dtype if self.config.method == "lora" else noisy.dtype), timesteps,
                    encoder_hidden_states=hidden.to(noisy.dtype)).sample

    def optimizer_step(self, accelerator) -> None:
        params = [p for module in self.trained for p in module.parameters() if p.requires_grad]
        accelerator.clip_grad_norm_(params, self.config.train.max_grad_norm)
        self.optimizer.step()
        self.lr_schedule.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.step(self.unet.parameters())

    @property
    def learning_rate(self) -> float:
        return float(self.lr_schedule.get_last_lr()[0])

    @contextlib.contextmanager
    def evaluating(self):
        """Eval mode (no dropout) and, for full fine-tuning with EMA, the EMA weights in the UNet."""
        for module in self.trained:
            module.eval()
        if self.ema is not None:
            self.ema.store(self.unet.parameters())
            self.ema.copy_to(self.unet.parameters())
        try:
            yield
        finally:
            if self.ema is not None:
                self.ema.restore(self.unet.parameters())
            for module in self.trained:
                module.train()

    def pipeline(self):
        """A StableDiffusionPipeline over the parts being trained (for validation images)."""
        from diffusers import StableDiffusionPipeline

        pipe = StableDiffusionPipeline(vae=self.vae, text_encoder=self.text_encoder, tokenizer=self.tokenizer,
                                       unet=self.unet, scheduler=self.base.scheduler, safety_checker=None,
                                       feature_extractor=None, requires_safety_checker=False)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    # -- checkpoints -------------------------------------------------------------------------------------------------
    def _trainable_state(self) -> dict:
        state = {}
        for prefix, module in zip(("unet", "text_encoder"), self.trained):
            for name, p in module.named_parameters():
                if p.requires_grad:
                    state[f"{prefix}.{name}"] = p.detach().float().cpu().contiguous()
        return state

    def save_state(self, folder: Path) -> None:
        import torch
        from safetensors.torch import save_file

        save_file(self._trainable_state(), str(folder / TRAINABLE_FILE))
        torch.save(self.optimizer.state_dict(), folder / OPTIMIZER_FILE)
        schedule = {k: v for k, v in self.lr_schedule.state_dict().items() if k != "lr_lambdas"}
        (folder / SCHEDULE_FILE).write_text(json.dumps(schedule))
        if self.ema is not None:
            save_file({f"p{i:05d}": p.detach().cpu().contiguous() for i, p in enumerate(self.ema.shadow_params)},
                      str(folder / EMA_FILE), metadata={"optimization_step": str(self.ema.optimization_step)})

    def load_state(self, folder: Path) -> None:
        """Restore the trainable weights, the optimiser, the schedule and the EMA of a checkpoint; a damaged,
        foreign or pickled-code checkpoint is an ``OutputDirError`` naming it (nothing of it is executed)."""
        import pickle

        try:
            self._load_state(folder)
        except (OSError, ValueError, KeyError, TypeError, RuntimeError, IndexError, pickle.UnpicklingError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise OutputDirError(f"checkpoint '{folder}' cannot be resumed from ({type(exc).__name__}: {first[:300]})",
                                 fix=f"delete {folder} to resume from the checkpoint before it, or use a new "
                                 "output_dir") from None

    def _load_state(self, folder: Path) -> None:
        import torch
        from safetensors import safe_open
        from safetensors.torch import load_file

        state = load_file(str(folder / TRAINABLE_FILE))
        for prefix, module in zip(("unet", "text_encoder"), self.trained):
            for name, p in module.named_parameters():
                if p.requires_grad:
                    p.data.copy_(state[f"{prefix}.{name}"].to(p.dtype))
        self.optimizer.load_state_dict(torch.load(folder / OPTIMIZER_FILE, map_location="cpu", weights_only=True))
        saved = json.loads((folder / SCHEDULE_FILE).read_text())
        self.lr_schedule.load_state_dict({**self.lr_schedule.state_dict(), **saved})
        if self.ema is not None:
            ema = load_file(str(folder / EMA_FILE))
            for i, p in enumerate(self.ema.shadow_params):
                p.data.copy_(ema[f"p{i:05d}"])
            with safe_open(str(folder / EMA_FILE), "pt") as fh:
                self.ema.optimization_step = int(fh.metadata()["optimization_step"])

    # -- results -----------------------------------------------------------------------------------------------------
    def save_result(self, out: Path) -> None:
        """LoRA: ``pytorch_lora_weights.safetensors`` with its peft settings (``pipe.load_lora_weights(out)``);
        full: the pipeline with the (EMA) UNet (``StableDiffusionPipeline.from_pretrained(out)``)."""
        from diffusers import StableDiffusionPipeline

        if self.config.method == "lora":
            from diffusers.utils import convert_state_dict_to_diffusers
            from peft.utils import get_peft_model_state_dict

            layers = {"unet_lora_layers": convert_state_dict_to_diffusers(get_peft_model_state_dict(self.unet)),
                      "unet_lora_adapter_metadata": self.unet.peft_config["default"].to_dict()}
            if self.config.lora.text_encoder:
                layers["text_encoder_lora_layers"] = convert_state_dict_to_diffusers(
                    get_peft_model_state_dict(self.text_encoder))
                layers["text_encoder_lora_adapter_metadata"] = self.text_encoder.peft_config["default"].to_dict()
            StableDiffusionPipeline.save_lora_weights(out, safe_serialization=True, **layers)
            return
        with self.evaluating():
            pipe = self.pipeline()
            pipe.save_pretrained(out, safe_serialization=True)

    def summary_base(self, examples, expert) -> dict:
        """What the summary and model card say about the run's inputs."""
        config = self.config
        data = config.data
        return {"method": config.method, "base_model": config.base_model, "base_revision": self.provenance.revision,
                "base_weights_sha256": self.provenance.weights_sha256, "base_license": self.provenance.license,
                "prediction_type": self.scheduler.config.get("prediction_type", "epsilon"),
                "trainable_parameters": self.trainable_count,
                "data": {"source": data.dataset or data.image_folder, "pairs": len(examples),
                         "skipped": dict(examples.skipped), "caption_column": data.caption_column},
                "validation_expert": None if expert is None else {"name": expert["name"], "sha256": expert["sha256"]}}
