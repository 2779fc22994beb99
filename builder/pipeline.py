"""Which stages a manifest runs, in the order the pipeline fixes: the only module that names stage classes.

``Pipeline`` is what the core's executors run (``builder.core.executor.Plan``): the stage list, a stage factory
and each shard's specs, for one manifest; it pickles with the manifest to every worker.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from builder.core.options import RunOptions
from builder.core.records import Record
from builder.core.stage import Column, GlobalStage, Stage
from builder.manifest import Manifest


@dataclass
class Pipeline:
    """The build of one (listed) manifest, as the executors see it."""

    manifest: Manifest

    def __post_init__(self) -> None:
        self.stage_names = stage_names(self.manifest)

    def num_shards(self) -> int:
        return self.manifest.num_shards()

    def shard_size(self, shard: int) -> int:
        from builder.expand.specs import shard_bounds

        return len(shard_bounds(self.manifest, shard))

    def specs(self, shard: int) -> list[Record]:
        from builder.expand.specs import shard_specs

        return shard_specs(self.manifest, shard)

    def stages(self, options: RunOptions) -> list[Stage]:
        return shard_stages(self.manifest, options)

    def columns(self, root: Path) -> list[tuple[str, Column]]:
        """(stage name, column) of every column the stages add to the released dataset, in pipeline order."""
        stages = [*self.stages(RunOptions()), *self.global_stages(root)]
        return [(stage.name, column) for stage in stages for column in stage.dataset_columns()]

    def global_stages(self, root: Path) -> list[GlobalStage]:
        """The whole-set stages, then the reviewer's decisions when the build folder holds them."""
        return global_stages(self.manifest) + review_stages(root, self.manifest.labels.names)


def shard_stages(manifest: Manifest, options: RunOptions | None = None) -> list[Stage]:
    """Per-shard stages, in order. Construction is cheap; models load in ``setup``."""
    options = options or RunOptions()
    from curation.shard.integrity import IntegrityFilter

    stages: list[Stage] = []
    if manifest.images is not None:
        from builder.expand.ingest import IngestStage

        stages.append(IngestStage(manifest.images, manifest.listing))
    elif manifest.edit is not None:
        from builder.synthesis.edit import EditStage

        stages.append(EditStage(manifest.edit, manifest.generator, manifest.listing, manifest.aus.names,
                                manifest.labels.names, trust_remote_code=options.trust_remote_code))
    else:
        from builder.synthesis.generate import GenerateStage

        if manifest.prompts.enrich is not None:
            from builder.synthesis.enrich import EnrichStage

            stages.append(EnrichStage(manifest.prompts.enrich, manifest.seed))
        stages.append(GenerateStage(manifest.generator, manifest.aus.names, manifest.labels.names, manifest.seed,
                                    trust_remote_code=options.trust_remote_code, axes=tuple(manifest.prompts.all_axes)))
    curation = manifest.curation
    if curation.integrity.enabled:
        stages.append(IntegrityFilter(curation.integrity))
    device = manifest.labelling.device if manifest.labelling is not None else "auto"
    if curation.faces.enabled:
        from curation.shard.face_quality import FaceQualityFilter

        stages.append(FaceQualityFilter(curation.faces, device))
    if manifest.edit is not None:
        from curation.shard.identity_drift import IdentityDriftFilter

        stages.append(IdentityDriftFilter(manifest.edit.identity, curation.faces, device))
    if curation.identity_leak is not None:
        from curation.shard.leak import IdentityLeakStage

        stages.append(IdentityLeakStage(curation.identity_leak, device))
    if manifest.labelling is not None:
        from curation.labelling.stage import LabelStage

        stages.append(LabelStage(manifest.labelling, manifest.labels.names, manifest.labelling.device,
                                 guide_is_only_labeller=guide_is_only_labeller(manifest),
                                 trust_remote_code=options.trust_remote_code))
    if manifest.annotate is not None:
        stages += annotate_stages(manifest, device, options)
    return stages


def annotate_stages(manifest: Manifest, device: str, options: RunOptions) -> list[Stage]:
    """The training-pair stages: align, upscale, AU intensities (with a detector), caption, caption checks."""
    from builder.annotate.align import AlignStage
    from builder.annotate.caption import CaptionStage
    from builder.annotate.caption_check import CaptionCheck
    from builder.annotate.upscale import UpscaleStage

    spec = manifest.annotate
    stages: list[Stage] = [AlignStage(spec, device), UpscaleStage(spec, device)]
    if spec.aus.model != "none":
        from builder.annotate.aus import AUStage

        stages.append(AUStage(spec.aus, device, trust_remote_code=options.trust_remote_code))
    stages.append(CaptionStage(spec, manifest.labels.names, manifest.seed, device))
    stages.append(CaptionCheck(spec.checks, manifest.labels.names))
    return stages


def global_stages(manifest: Manifest) -> list[GlobalStage]:
    """Stages over all kept records, run by the release after every shard is done, in order."""
    stages: list[GlobalStage] = []
    if manifest.images is not None and manifest.images.top_k_per_class is not None:
        from curation.whole_set.select import TopKPerClass

        stages.append(TopKPerClass(manifest.images.top_k_per_class))
    curation = manifest.curation
    embeddings = None
    if (curation.dedupe.enabled and curation.dedupe.embedding_similarity is not None) or curation.identities:
        from curation.whole_set.embeddings import FaceEmbeddings

        embeddings = FaceEmbeddings(curation.embedder)  # one per release: dedupe and identities share vectors
    if curation.dedupe.enabled:
        from curation.whole_set.dedupe import DedupeStage

        stages.append(DedupeStage(curation.dedupe, embeddings))
    if curation.identities is not None:
        from curation.whole_set.identities import IdentitiesStage

        stages.append(IdentitiesStage(curation.identities, embeddings, manifest.labels.names))
    if curation.balance is not None:
        from curation.whole_set.balance import BalanceStage

        stages.append(BalanceStage(manifest.curation.balance, manifest.labels.names))
    return stages


def review_stages(root: Path, names) -> list[GlobalStage]:
    """The reviewer's decisions (``review.json``, written by ``build-dataset release``) as the last global stage."""
    from curation.whole_set.review import REVIEW_FILE, ReviewStage

    path = Path(root) / REVIEW_FILE
    return [ReviewStage.from_file(path, names)] if path.is_file() else []


def stage_names(manifest: Manifest) -> list[str]:
    return [stage.name for stage in shard_stages(manifest)]


def guide_is_only_labeller(manifest: Manifest) -> bool:
    """True when the model that guided generation is also the only labeller (its labels confirm themselves)."""
    guidance = manifest.generator.guidance if manifest.generator is not None else None
    labelling = manifest.labelling
    return (guidance is not None and labelling is not None and len(labelling.experts) == 1
            and labelling.feranno is None and labelling.experts[0].model == guidance.classifier)


def guard_warnings(manifest: Manifest) -> list[str]:
    """Warnings about a manifest's set-up that are allowed but weaken the dataset: the guide is the only
    labeller; a LoRA was trained on another base model, or selected with a model that guides or labels this
    build (read from its training summary)."""
    out = []
    if guide_is_only_labeller(manifest):
        out.append(f"the guide model '{manifest.generator.guidance.classifier}' is also the only labeller: labels "
                   "it steered towards are confirmed by the same model (add an independent expert; the data card "
                   "says so)")
    if manifest.generator is not None and manifest.generator.lora:
        from builder.models.lora import lora_warnings

        out += lora_warnings(manifest)
    return out
