"""Sample specs of an ``edit`` source: every listed source image once per target class, in a fixed order.

Sample ``i`` is source ``i // T`` edited to target ``i % T`` (``T`` targets, in ``edit.targets`` order), so the
specs of a source sit together and any shard size gives the same samples. Its id is the dataset name, the
source's position in the listing and the target class (``demo-0000003-happy``); its AU targets (jittered),
prompt and seed are drawn from (global seed, sample index) like a generated sample's, so a rerun is identical.
``attributes`` carries ``source_identity`` (who the source shows: the file, its folder's name, or a dataset
column's value), which the release groups splits by.
"""
from __future__ import annotations

from pathlib import Path

from builder.core.records import Record
from builder.core.seeding import derive_seed
from builder.expand.aus import draw_aus
from builder.manifest import Manifest
from builder.manifest.label_maps import expression_text
from builder.manifest.templates import au_cues, render_prompt

AU_CUE_MIN, AU_CUE_MAX = 1.0, 4
"""AUs from this intensity, at most this many, in '{au_cues}' (the prompts section's defaults)."""


def source_identity(manifest: Manifest, source: int) -> str:
    """Who listed image ``source`` shows, as ``edit.source_identity`` says."""
    spec, listing = manifest.edit, manifest.listing
    if spec.source_identity == "folder-names":
        return Path(listing.entry(source)).parent.as_posix()
    if spec.source_identity == "file":
        return listing.entry(source) if listing.kind == "folder" else f"row-{source}"
    return listing.people[source] or f"row-{source}"


def edit_spec(manifest: Manifest, index: int) -> Record:
    """The spec of sample ``index`` of an edit source."""
    targets = manifest.edit_targets
    source, label = index // len(targets), targets[index % len(targets)]
    name = manifest.labels.names[label]
    au = draw_aus(manifest, index, name)
    edit = manifest.edit
    cues, codes = au_cues(manifest.aus.names, au, AU_CUE_MIN, AU_CUE_MAX)
    prompt = render_prompt(edit.prompt, {"expression": expression_text(name), "au_cues": cues, "au_names": codes})
    return Record(sample_id=manifest.sample_id(index), index=index, label=label, label_name=name, au=au,
                  attributes={"source_identity": source_identity(manifest, source)}, prompt=prompt,
                  negative_prompt=edit.negative_prompt, seed=derive_seed(manifest.seed, index, "generator"),
                  source=manifest.listing.entry(source))


def edit_specs(manifest: Manifest, indices: range) -> list[Record]:
    return [edit_spec(manifest, i) for i in indices]
