"""Prompt enrichment by a local text-generation model (transformers), as a stage before generation.

Each record's prompt is given to a causal language model after an
instruction; the sampled continuation is appended to the prompt. Sampling is
seeded from (global seed, sample index), so a prompt does not depend on its
batch, shard or worker.
"""
from __future__ import annotations

from collections.abc import Iterator

from builder.core.errors import ModelLoadError
from builder.core.records import Record
from builder.core.seeding import derive_seed
from builder.core.stage import Resources, ShardContext, Stage
from builder.manifest import Enrich


class EnrichStage(Stage):
    name = "enrich"
    resources = Resources(cpus=1, gpus=0)

    def __init__(self, spec: Enrich, seed: int):
        self.spec, self.seed = spec, seed
        self.model = self.tokenizer = None
        self.provenance = None

    def setup(self) -> None:
        from pathlib import Path

        from transformers import AutoModelForCausalLM, AutoTokenizer

        from builder.models.diffusion import quiet_loading, weights_sha256

        quiet_loading()
        folder = Path(self.spec.model).expanduser()
        if not (folder / "config.json").is_file():
            raise ModelLoadError(f"prompts.enrich.model '{self.spec.model}' is not a transformers model folder",
                                 fix="give a local folder saved with save_pretrained (config.json, weights, tokenizer)")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
            self.model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True).eval()
        except (OSError, ValueError, KeyError) as exc:
            raise ModelLoadError(f"could not load a causal language model from '{folder}': {str(exc).splitlines()[0]}",
                                 fix="give a causal LM folder (e.g. a GPT-2 or Llama-style model)") from None
        self.provenance = {"model": str(folder), "sha256": weights_sha256(folder)}

    def meta(self) -> dict:
        return {"enrich_model": self.provenance} if self.provenance else {}

    def process(self, records: list[Record], ctx: ShardContext) -> Iterator[Record]:
        for record in records:
            record.prompt = " ".join(f"{record.prompt} {self.continuation(record)}".split())
            yield record

    def continuation(self, record: Record) -> str:
        """The model's sampled continuation of the instruction plus this record's prompt."""
        import torch

        spec = self.spec
        inputs = self.tokenizer(spec.instruction + record.prompt, return_tensors="pt")
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        with torch.random.fork_rng(devices=[]), torch.inference_mode():
            torch.manual_seed(derive_seed(self.seed, record.index, "enrich"))
            bos = self.tokenizer.bos_token_id
            out = self.model.generate(**inputs, do_sample=True, temperature=spec.temperature, min_new_tokens=1,
                                      max_new_tokens=spec.max_new_tokens, pad_token_id=pad,
                                      bad_words_ids=[[bos]] if bos is not None and bos != pad else None)
        text = self.tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
        text = "".join(ch if ch.isprintable() and ch != "\ufffd" else " " for ch in text)
        return " ".join(text.split())  # no control characters or undecodable bytes in a prompt
