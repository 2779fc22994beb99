"""Adding a stage touches three files: the stage's own file, the pipeline's list and the manifest section that
configures it. In a copy of the tree, an example stage (the image's aspect ratio, dropping too-wide images) is
added with exactly those edits; a build then shows it everywhere a stage shows: the funnel in the stats and the
card, its drops in the rejected files, its column in the dataset with its type, and its note in the card."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import yaml

from tests.conftest import DEMO, ROOT

pytestmark = pytest.mark.slow

STAGE = '''"""The 'aspect' stage: the image's width / height; wider than ``spec.max_ratio`` is dropped as too_wide."""
from __future__ import annotations

from builder.core.records import Record
from builder.core.stage import Column, Filter, ShardContext


class AspectFilter(Filter):
    name = "aspect"
    columns = (Column("aspect_ratio", "float32", "width / height of the image",
                      lambda r, meta: r.scores["aspect_ratio"]),)

    def __init__(self, spec):
        self.spec = spec

    def check(self, record: Record, ctx: ShardContext) -> tuple[str, str] | None:
        from PIL import Image

        with Image.open(ctx.resolve(record.image)) as im:
            ratio = im.width / im.height
        record.scores["aspect_ratio"] = round(ratio, 4)
        return ("too_wide", f"ratio {ratio:.2f} > {self.spec.max_ratio:g}") if ratio > self.spec.max_ratio else None
'''
SECTION = '''

class Aspect(Strict):
    """The aspect-ratio check (an example stage)."""

    max_ratio: float = Field(gt=0, description="Widest width / height kept.")
'''
FIELD = ('''    balance: Balance | None = Field(''', '''    aspect: Annotated[Aspect | None, ADDED_LATER] = Field(default=None, description="Aspect-ratio check.")
    balance: Balance | None = Field(''')
PIPELINE = ('''    device = manifest.labelling.device if manifest.labelling is not None else "auto"''',
            '''    if curation.aspect is not None:
        from curation.shard.aspect import AspectFilter

        stages.append(AspectFilter(curation.aspect))
    device = manifest.labelling.device if manifest.labelling is not None else "auto"''')


def edit(path, old: str, new: str) -> None:
    text = path.read_text()
    assert text.count(old) == 1, (path, old)
    path.write_text(text.replace(old, new))


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """A copy of the source tree with the example stage added by three edits."""
    copy = tmp_path_factory.mktemp("tree")
    for package in ("builder", "curation", "cards", "evaluation", "manifests"):
        shutil.copytree(ROOT / package, copy / package, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "curation" / "shard" / "aspect.py").write_text(STAGE)  # 1. the stage file
    edit(copy / "builder" / "pipeline.py", *PIPELINE)  # 2. its place in the pipeline
    section = copy / "builder" / "manifest" / "curation.py"  # 3. the manifest section
    section.write_text(section.read_text().replace("\n\nclass Curation(Strict):", SECTION + "\n\nclass Curation(Strict):"))
    edit(section, *FIELD)
    return copy


def test_an_example_stage_needs_three_edits(tree, tmp_path):
    changed = sorted(p.relative_to(tree).as_posix() for p in tree.rglob("*.py")
                     if not (ROOT / p.relative_to(tree)).is_file()
                     or (ROOT / p.relative_to(tree)).read_bytes() != p.read_bytes())  # the three edits, no more
    assert changed == ["builder/manifest/curation.py", "builder/pipeline.py", "curation/shard/aspect.py"]

    data = yaml.safe_load(DEMO.read_text())
    data["curation"]["aspect"] = {"max_ratio": 0.5}  # the demo's square images are all too wide for this
    manifest = tmp_path / "aspect.yaml"
    manifest.write_text(yaml.safe_dump(data))
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "-m", "builder.cli", str(manifest), "--out", str(out), "--no-progress",
                             "--allow-empty"], cwd=tree, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    stats = json.loads((out / "stats.json").read_text())
    assert stats["stages"]["aspect"]["dropped"] == {"too_wide": 28}
    assert (out / "rejected" / "aspect.jsonl").read_text().count('"too_wide"') == 28
    assert stats["columns"]["aspect_ratio"] == {"stage": "aspect", "type": "float32",
                                                "doc": "width / height of the image"}
    card = (out / "README.md").read_text()
    assert "| aspect | 28 | 0 | too_wide: 28 |" in card and "`aspect_ratio` (width / height of the image)" in card

    data["curation"]["aspect"] = {"max_ratio": 2.0}
    manifest.write_text(yaml.safe_dump(data))
    out = tmp_path / "kept"
    result = subprocess.run([sys.executable, "-m", "builder.cli", str(manifest), "--out", str(out), "--no-progress"],
                            cwd=tree, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    import datasets

    train = datasets.load_from_disk(str(out / "hf"))["train"]
    assert train.features["aspect_ratio"] == datasets.Value("float32") and set(train["aspect_ratio"]) == {1.0}
