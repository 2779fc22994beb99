"""The 'caption' stage: template captions of real aligned face crops, and a tiny random-weight vision-language
model (tests/fixtures/tiny_vlm.py) through ``builder.models.captioners``: batched, deterministic greedy and
seeded captions that do not depend on the batch, and refusals of models that are not image-text-to-text."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from builder.annotate.caption import (
    ACTIVE,
    MAX_CUES,
    CaptionStage,
    active_au_cues,
    head_pose,
    template_caption,
)
from builder.core.errors import ModelLoadError
from builder.core.records import Record
from builder.core.stage import ShardContext
from builder.manifest.annotate import Annotate
from builder.manifest.au_sets import AU_SETS
from builder.manifest.label_maps import EXPRESSION_TEXT, LABEL_MAPS
from builder.manifest.templates import AU_TEXT
from builder.models.captioners import (
    SeededSampler,
    clean_caption,
    load_captioner,
    reference_problems,
    vlm_model_types,
    weights_sha256,
)
from tests.fixtures.tiny_vlm import build_tiny_causal_lm, build_tiny_vlm

CROP = 128
NAMES = LABEL_MAPS["affectnet7"]
DISFA = AU_SETS["disfa12"]
INSTRUCTION = "describe this person's facial expression"


# -- fixtures: real aligned crops, tiny models ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def crops(people, tmp_path_factory) -> dict:
    """name -> (crop path relative to the build folder, aligned landmarks) for every example face, aligned as the
    'align' stage does (five points onto the template of a 128 px crop with margin 0.3), in a build folder."""
    from PIL import Image

    from curation.faces.detect import (
        FacePolicy,
        align,
        find_face,
        load_detector,
        similarity_transform,
        template,
    )

    root = tmp_path_factory.mktemp("build")
    folder = root / "shards" / "align" / "00000" / "images"
    folder.mkdir(parents=True)
    detector, out = load_detector(), {"root": root}
    for name, photo in people.items():
        face = find_face(detector, FacePolicy(), np.asarray(photo))
        landmarks = np.asarray(face["landmarks"])
        matrix = similarity_transform(landmarks, template(CROP, 0.3))
        Image.fromarray(align(photo, landmarks, size=CROP, margin=0.3)).save(folder / f"{name}.png")
        aligned = landmarks @ matrix[:, :2].T + matrix[:, 2]
        out[name] = (f"shards/align/00000/images/{name}.png", [[round(x, 2), round(y, 2)] for x, y in aligned])
    return out


@pytest.fixture(scope="module")
def vlm(tmp_path_factory) -> Path:
    return build_tiny_vlm(tmp_path_factory.mktemp("models") / "tiny-vlm")


@pytest.fixture(scope="module")
def chat_vlm(tmp_path_factory) -> Path:
    return build_tiny_vlm(tmp_path_factory.mktemp("models") / "tiny-chat-vlm", chat_template=True)


@pytest.fixture(scope="module")
def captioner(vlm):
    return load_captioner(str(vlm), "cpu")


def record(crops: dict, name: str, index: int, label: str = "happy", au=None) -> Record:
    image, landmarks = crops[name]
    return Record(sample_id=f"pairs-{index:07d}", index=index, label=NAMES.index(label) if label else -1,
                  label_name=label, au=list(au or []), attributes={}, prompt="", negative_prompt="", seed=0,
                  image=image, face={"aligned_landmarks": landmarks}, scores={"face_side": 200.0})


def context(root: Path) -> ShardContext:
    return ShardContext(root=root, shard=0, staging=root / "staging", final=root / "shards" / "caption" / "00000")


def intensities(**values: float) -> list[float]:
    return [values.get(name, 0.0) for name in DISFA]


def run(stage: CaptionStage, records: list[Record], root: Path) -> list[Record]:
    stage.setup()
    out = list(stage.process(records, context(root)))
    assert [r.sample_id for r in out] == [r.sample_id for r in records]
    return out


def annotate(model: str = "template", **captions) -> Annotate:
    return Annotate(captions={"model": model, **captions})


def all_crops(crops: dict, **kwargs) -> list[Record]:
    names = [n for n in crops if n != "root"]
    return [record(crops, name, i, label=NAMES[i % len(NAMES)], **kwargs) for i, name in enumerate(names)]


# -- template captions ------------------------------------------------------------------------------------------------
def test_template_names_the_expression_and_the_strongest_aus_first(crops):
    au = intensities(AU6=2.0, AU12=4.0, AU25=1.2, AU1=0.5)
    out = run(CaptionStage(annotate(), NAMES, 7), [record(crops, "g1", 0, "happy", au)], crops["root"])[0]
    assert out.drop is None and out.attributes["caption_source"] == "template"
    text = out.text
    assert text.startswith("a close-up photo of a person with a happy facial expression"), text
    assert text.endswith(": lip corners strongly pulled up, cheeks moderately raised, lips slightly parted"), text
    assert "inner brows" not in text  # AU1 at 0.5 is below the active intensity
    assert "AU" not in text


def test_template_uses_the_prompt_adjective_of_any_label_spelling(crops):
    for label, words in (("surprise", "a surprised facial"), ("anger", "an angry facial"),
                         ("neutral", "a neutral facial"), ("fear", "a fearful facial")):
        text = template_caption(record(crops, "g3", 0, label), None, "disfa12")
        assert words in text, text
    rafdb = Record(**{**record(crops, "g3", 0).__dict__, "label_name": "happiness"})
    assert "a happy facial expression" in template_caption(rafdb, None, "disfa12")


def test_template_says_only_what_it_measured(crops):
    """Grey photo -> black-and-white; the head pose from the aligned landmarks; nothing else (a closed
    vocabulary: no name, age, gender or anything the tool did not measure)."""
    from PIL import Image

    out = {r.sample_id: r for r in run(CaptionStage(annotate(), NAMES, 7), all_crops(crops), crops["root"])}
    by_name = {name: out[f"pairs-{i:07d}"] for i, name in enumerate(n for n in crops if n != "root")}
    assert by_name["portrait"].text.startswith("a black-and-white close-up photo")  # insightface's grey portrait
    assert not by_name["astronaut"].text.startswith("a black-and-white")
    assert "facing the camera" in by_name["astronaut"].text
    assert "head turned to the left" in by_name["g5"].text  # nose well left of the eyes' midpoint
    allowed = set("a an black-and-white close-up photo of person person's with facial expression face facing the "
                  "camera head turned slightly to left right".split())
    allowed |= set(EXPRESSION_TEXT.values())
    for record_ in out.values():
        assert record_.drop is None
        assert set(re.findall(r"[\w'-]+", record_.text)) <= allowed, record_.text
        assert Image.open(crops["root"] / record_.image).size == (CROP, CROP)


def test_head_pose_from_landmarks():
    eyes = [[40.0, 50.0], [80.0, 50.0]]
    mouth = [[45.0, 90.0], [75.0, 90.0]]
    assert head_pose(eyes + [[60.0, 70.0]] + mouth) == "facing the camera"
    assert head_pose(eyes + [[52.0, 70.0]] + mouth) == "head turned slightly to the left"  # offset -0.2
    assert head_pose(eyes + [[74.0, 70.0]] + mouth) == "head turned to the right"  # offset +0.35
    assert head_pose(None) is None and head_pose([[0, 0]]) is None


def test_au_cues_strongest_first_capped_and_only_measured():
    values = intensities(AU1=1.0, AU2=3.0, AU4=1.0, AU5=2.0, AU6=4.0, AU9=1.5, AU12=4.6)
    cues = active_au_cues(DISFA, values)
    assert len(cues) == MAX_CUES
    assert cues == ["lip corners extremely pulled up", "cheeks strongly raised", "outer brows clearly raised",
                    "upper eyelids moderately raised", "nose moderately wrinkled"]
    ties = active_au_cues(DISFA, intensities(AU4=1.0, AU1=1.0))  # a tie keeps set order
    assert ties == ["inner brows slightly raised", "brows slightly lowered and drawn together"]
    unmeasured = [None] * len(DISFA)
    unmeasured[DISFA.index("AU12")] = 2.0
    assert active_au_cues(DISFA, unmeasured) == ["lip corners moderately pulled up"]
    assert active_au_cues(DISFA, []) == []
    assert active_au_cues(DISFA, intensities(AU12=ACTIVE - 0.01)) == []
    sided = AU_SETS["opengraphau41"]
    values = [0.0] * len(sided)
    for name, v in (("AU12", 3.0), ("AUL12", 3.2), ("AUR6", 2.0)):
        values[sided.index(name)] = v
    assert active_au_cues(sided, values) == ["lip corners clearly pulled up", "right cheeks moderately raised"]
    with pytest.raises(ValueError, match="AU intensities"):
        active_au_cues(DISFA, [1.0, 2.0])


def test_every_au_of_every_set_has_words():
    for names in AU_SETS.values():
        for name in names:
            assert active_au_cues((name,), [3.0])[0].endswith(AU_TEXT["AU" + name.lstrip("AULR")][1])


def test_a_record_without_a_label_or_aus_gets_a_plain_caption(crops):
    out = run(CaptionStage(annotate(), NAMES, 7), [record(crops, "g3", 0, label="")], crops["root"])[0]
    assert out.text == "a close-up photo of a person's face, facing the camera"


def test_an_unreadable_crop_is_dropped_as_error(crops, tmp_path):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    bad = record(crops, "g1", 0)
    bad.image = "broken.png"
    shutil.copy(crops["root"] / crops["g1"][0], tmp_path / "good.png")
    good = record(crops, "g1", 1)
    good.image = "good.png"
    out = run(CaptionStage(annotate(), NAMES, 7), [bad, good], tmp_path)
    assert out[0].drop.stage == "caption" and out[0].drop.reason == "error" and out[0].text is None
    assert out[1].drop is None and out[1].text


def test_template_leaves_out_its_weakest_cues_to_fit_the_text_encoder(crops):
    from builder.models.captioners import count_tokens

    au = intensities(AU1=1.5, AU2=2.0, AU4=2.5, AU6=3.0, AU12=4.0)
    full = template_caption(record(crops, "g1", 0, "happy", au), None, "disfa12")
    assert full.endswith(", inner brows moderately raised")  # five cues, the weakest last
    spec = Annotate(captions={"model": "template"}, checks={"max_tokens": 60})
    stage = CaptionStage(spec, NAMES, 7)
    out = run(stage, [record(crops, "g1", 0, "happy", au)], crops["root"])[0]
    assert count_tokens(stage.tokenizer, out.text) <= 60 < count_tokens(stage.tokenizer, full)
    assert full.startswith(out.text) and ": lip corners strongly pulled up" in out.text
    assert stage.meta()["fit_to"] == {"text_encoder": "builtin:tiny-sd", "max_tokens": 60}


def test_template_meta_and_columns(crops):
    stage = CaptionStage(annotate(), NAMES, 7, "cuda")
    assert stage.meta()["model"] == "template" and stage.meta()["template"].startswith("a [black-and-white ]")
    assert stage.resources.gpus == 0  # no model: no GPU asked for
    out = run(stage, [record(crops, "g1", 0)], crops["root"])[0]
    columns = {c.name: c for c in stage.dataset_columns()}
    assert set(columns) == {"text", "caption_source"} and {c.dtype for c in columns.values()} == {"string"}
    assert columns["text"].value(out, {}) == out.text
    assert columns["caption_source"].value(out, {}) == "template"


# -- the vision-language model ----------------------------------------------------------------------------------------
def test_vlm_captions_are_batched_clean_text(vlm, crops):
    stage = CaptionStage(annotate(str(vlm), instruction=INSTRUCTION, max_new_tokens=12, batch_size=3), NAMES, 7, "cpu")
    stage.setup()
    calls = []
    generate = stage.captioner.model.generate

    def counted(*args, **kwargs):
        calls.append(kwargs["input_ids"].shape[0])
        return generate(*args, **kwargs)

    stage.captioner.model.generate = counted
    out = list(stage.process(all_crops(crops), context(crops["root"])))
    assert calls == [3, 3, 2]  # 8 crops in batches of 3
    for r in out:
        assert r.drop is None and r.attributes["caption_source"] == str(vlm)
        assert isinstance(r.text, str) and r.text == " ".join(r.text.split()) and r.text.isprintable()
        assert "<image>" not in r.text and not r.text.startswith(INSTRUCTION)
    assert sum(bool(r.text) for r in out) >= 6


def test_vlm_greedy_is_deterministic_and_independent_of_the_batch(vlm, crops):
    texts = {}
    for batch_size in (1, 3, 8):
        for attempt in range(2 if batch_size == 3 else 1):
            stage = CaptionStage(annotate(str(vlm), max_new_tokens=10, batch_size=batch_size), NAMES, 7, "cpu")
            texts[batch_size, attempt] = [r.text for r in run(stage, all_crops(crops), crops["root"])]
    assert len({tuple(t) for t in texts.values()}) == 1, texts
    assert len(set(texts[1, 0])) > 1  # different faces, different captions


def test_vlm_seeded_sampling_is_per_image_seed(vlm, crops):
    """A seed gives the same caption whatever the batch; the stage's seed is derive_seed(seed, index, 'caption')."""
    runs = {}
    for seed, batch_size in ((7, 2), (7, 8), (8, 8)):
        stage = CaptionStage(annotate(str(vlm), max_new_tokens=10, batch_size=batch_size, sampling="seeded"),
                             NAMES, seed, "cpu")
        runs[seed, batch_size] = [r.text for r in run(stage, all_crops(crops), crops["root"])]
    assert runs[7, 2] == runs[7, 8]
    assert runs[7, 8] != runs[8, 8]
    greedy = CaptionStage(annotate(str(vlm), max_new_tokens=10, batch_size=8), NAMES, 7, "cpu")
    assert [r.text for r in run(greedy, all_crops(crops), crops["root"])] != runs[7, 8]
    assert stage.meta()["sampling"] == "seeded" and stage.meta()["temperature"] == 0.7


def test_captioner_seeds(captioner, people):
    image = people["g1"]
    same = captioner.caption([image] * 4, INSTRUCTION, 12, seeds=[1, 1, 2, 3])
    assert same[0] == same[1]
    assert len(set(captioner.caption([image] * 6, INSTRUCTION, 12, seeds=[1, 2, 3, 4, 5, 6]))) > 1
    assert captioner.caption([image], INSTRUCTION, 12, seeds=[2]) == [same[2]]
    greedy = captioner.caption([image] * 3, INSTRUCTION, 12)
    assert len(set(greedy)) == 1 and captioner.caption([image], INSTRUCTION, 12) == greedy[:1]
    with pytest.raises(ValueError, match="2 seeds for 3 images"):
        captioner.caption([image] * 3, INSTRUCTION, 12, seeds=[1, 2])
    assert captioner.caption([], INSTRUCTION, 12) == []


def test_seeded_sampler_draws_from_the_nucleus():
    import torch

    scores = torch.tensor([[5.0, 4.0, -10.0, -10.0]] * 2)
    sampler = SeededSampler([3, 3], temperature=0.7, top_p=0.9)
    drawn = {int(torch.argmax(sampler(None, scores)[0])) for _ in range(50)}
    assert drawn <= {0, 1} and drawn
    out = SeededSampler([11, 11], temperature=0.7, top_p=0.9)(None, scores)
    assert torch.equal(out[0], out[1]) and int((out[0] == 0).sum()) == 1


def test_chat_template_prompt(chat_vlm, people):
    captioner = load_captioner(str(chat_vlm), "cpu")
    prompt = captioner.prompt(INSTRUCTION)
    assert prompt.startswith("user: <image> ") and prompt.endswith("assistant:") and INSTRUCTION in prompt
    texts = captioner.caption([people["g1"], people["g2"]], INSTRUCTION, 8)
    assert all(not t.startswith("user:") and INSTRUCTION not in t for t in texts)


def test_plain_prompt_without_a_chat_template(captioner):
    assert captioner.prompt(INSTRUCTION) == f"<image>\n{INSTRUCTION}"


def test_clean_caption():
    assert clean_caption("  a\tface\x00 with\n\u0007 a smile\ufffd ") == "a face with a smile"
    assert clean_caption(f"{INSTRUCTION}: a happy face", INSTRUCTION) == "a happy face"
    assert clean_caption("Assistant: a sad face") == "a sad face"


def test_vlm_meta_and_provenance(vlm, tmp_path, crops):
    stage = CaptionStage(annotate(str(vlm), instruction=INSTRUCTION), NAMES, 7, "cpu")
    run(stage, [record(crops, "g1", 0)], crops["root"])
    meta = stage.meta()
    assert meta == {"model": str(vlm), "sha256": stage.captioner.sha256, "instruction": INSTRUCTION,
                    "sampling": "greedy", "max_new_tokens": 77}
    assert re.fullmatch(r"[0-9a-f]{64}", meta["sha256"]) and meta["sha256"] == weights_sha256(vlm)
    other = build_tiny_vlm(tmp_path / "other", seed=1)
    assert weights_sha256(other) != meta["sha256"]
    assert stage.runtime() == {"device": "cpu", "dtype": "float32", "batch_size": 4}
    assert stage.resources.gpus == 0  # pinned to the CPU
    assert CaptionStage(annotate(str(vlm)), NAMES, 7, "auto").resources.gpus == 1


# -- a cached Hub model, offline --------------------------------------------------------------------------------------
def cache_as_hub_model(folder: Path, repo: str) -> Path:
    """Put a save_pretrained folder into the Hugging Face cache as ``repo`` (a snapshot and refs/main), the way
    `hf download` leaves it; the cache is the test session's own (tests/conftest.py)."""
    from huggingface_hub import constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo_dir = Path(constants.HF_HUB_CACHE) / f"models--{repo.replace('/', '--')}"
    shutil.copytree(folder, repo_dir / "snapshots" / commit, dirs_exist_ok=True)
    (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs" / "main").write_text(commit)
    return repo_dir


def test_a_cached_hub_model_loads_offline(vlm, people):
    repo = "tester/tiny-vlm"
    repo_dir = cache_as_hub_model(vlm, repo)
    try:
        assert reference_problems(repo) == []
        captioner = load_captioner(repo, "cpu")
        assert captioner.name == repo and captioner.sha256 == weights_sha256(vlm)
        local = load_captioner(str(vlm), "cpu")
        assert captioner.caption([people["g3"]], INSTRUCTION, 8) == local.caption([people["g3"]], INSTRUCTION, 8)
    finally:
        shutil.rmtree(repo_dir)


# -- refusals ---------------------------------------------------------------------------------------------------------
def refused(ref: str, *expected: str) -> ModelLoadError:
    with pytest.raises(ModelLoadError) as info:
        load_captioner(ref, "cpu")
    message = info.value.render()
    assert message.startswith(f"{ref}: annotate.captions.model: "), message
    assert "\n  fix: " in message
    for text in expected:
        assert text in message, message
    return info.value


def test_a_causal_lm_without_vision_is_refused(tmp_path):
    gpt2 = build_tiny_causal_lm(tmp_path / "gpt2")
    refused(str(gpt2), "text-only causal language model (GPT2LMHeadModel)", "not an image-text-to-text model")
    assert reference_problems(str(gpt2))[0][0].endswith("not an image-text-to-text model (a vision-language model)")


def test_a_diffusers_pipeline_is_refused(tiny_model):
    refused(str(tiny_model), "diffusers pipeline folder (model_index.json)")


def test_a_classifier_is_refused(tmp_path):
    from transformers import ViTConfig, ViTForImageClassification

    ViTForImageClassification(ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                        intermediate_size=37, image_size=32, patch_size=8)).save_pretrained(tmp_path)
    refused(str(tmp_path), "is a classifier (ViTForImageClassification)")


def test_a_model_that_needs_its_own_code_is_refused_without_running_it(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({
        "model_type": "my_vlm", "architectures": ["MyVLM"], "auto_map": {"AutoModel": "modeling_my.MyVLM"}}))
    (tmp_path / "modeling_my.py").write_text("raise SystemExit('executed')\n")
    refused(str(tmp_path), "needs its own code (auto_map in config.json)", "trust_remote_code is off")


def test_a_missing_model_is_refused_offline(tmp_path):
    refused("someone/not-cached-vlm", "'someone/not-cached-vlm' is not in the local Hugging Face cache",
            "HF_HUB_OFFLINE=1", "hf download someone/not-cached-vlm")
    refused(str(tmp_path / "absent"), "does not exist")


# -- reference checks (no weights loaded) ----------------------------------------------------------------------------
def test_reference_problems(vlm, tmp_path):
    assert reference_problems(str(vlm)) == []
    assert reference_problems("someone/not-cached-vlm")[0][0].startswith("'someone/not-cached-vlm' is not in the local")
    assert "is neither" in reference_problems("bad id with spaces")[0][0]
    assert "has no config.json" in reference_problems(str(tmp_path))[0][0]
    (tmp_path / "file.bin").write_bytes(b"x")
    assert "is a file" in reference_problems(str(tmp_path / "file.bin"))[0][0]

    damaged = tmp_path / "damaged"
    shutil.copytree(vlm, damaged)
    (damaged / "processor_config.json").unlink()
    (damaged / "tokenizer.json").unlink()
    (damaged / "tokenizer_config.json").unlink()
    weights = damaged / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    found = [message for message, _ in reference_problems(str(damaged))]
    assert any("has no image processor" in m for m in found), found
    assert any("has no tokenizer" in m for m in found), found
    assert any("model.safetensors is truncated" in m for m in found), found
    (damaged / "config.json").write_text("{not json")
    assert "is not valid JSON" in reference_problems(str(damaged))[0][0]
    (damaged / "config.json").write_text(json.dumps({"architectures": ["X"]}))
    assert "has no field 'model_type'" in reference_problems(str(damaged))[0][0]


def test_reference_check_reads_the_installed_transformers_table():
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES,
    )

    assert vlm_model_types() == frozenset(MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES)
    assert {"llava", "qwen2_vl", "paligemma", "smolvlm"} <= vlm_model_types()
    assert "gpt2" not in vlm_model_types() and "clip" not in vlm_model_types()


def test_reference_check_imports_no_torch(vlm, tmp_path):
    import subprocess
    import sys

    code = ("import sys; from builder.models.captioners import reference_problems; "
            f"assert reference_problems({str(vlm)!r}) == []; "
            f"assert reference_problems({str(tmp_path)!r}); assert 'torch' not in sys.modules, 'torch'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2])



# -- a whole build --------------------------------------------------------------------------------------------------
def test_a_training_pairs_build_captions_with_the_vlm(people, vlm, tmp_path):
    """An images source (happy/ and sad/ folders) through align, upscale, caption (the tiny VLM, seeded) and the
    checks (flag): every released pair has the model's caption, its token count, and the stage's provenance."""
    import yaml
    from datasets import load_from_disk

    from builder.cli import main
    from builder.models.captioners import count_tokens, load_text_tokenizer

    for i, (name, photo) in enumerate(sorted(people.items())):
        folder = tmp_path / "photos" / ("happy" if i % 2 else "sad")
        folder.mkdir(parents=True, exist_ok=True)
        photo.save(folder / f"{name}.png")
    manifest = tmp_path / "pairs.yaml"
    manifest.write_text(yaml.safe_dump({
        "name": "pairs", "version": "0.1.0", "seed": 7,
        "images": {"folder": str(tmp_path / "photos"), "labels": "folder-names", "license": "cc0-1.0"},
        "labels": {"label_map": "affectnet7"},
        "annotate": {"crop": {"size": 64}, "captions": {"model": str(vlm), "max_new_tokens": 16, "batch_size": 3,
                                                        "sampling": "seeded"},
                     "checks": {"min_words": 1, "label_agreement": "flag"}},
        "output": {"splits": {"train": 1.0}, "shard_size": 4}}))
    out = tmp_path / "out"
    assert main([str(manifest), "--out", str(out), "--no-progress"]) == 0
    rows = load_from_disk(str(out / "hf"))["train"]
    tokenizer = load_text_tokenizer("builtin:tiny-sd")
    assert len(rows) >= 6
    for row in rows:
        assert row["caption_source"] == str(vlm) and isinstance(row["text"], str)
        assert row["caption_tokens"] == count_tokens(tokenizer, row["text"])
        assert row["caption_agrees"] in ("yes", "no")
    stats = json.loads((out / "stats.json").read_text())
    caption = stats["annotate"]["stages"]["caption"]
    assert caption["model"] == str(vlm) and caption["sha256"] == weights_sha256(vlm)
    assert caption["sampling"] == "seeded"
    assert main([str(manifest), "--out", str(out), "--no-progress"]) == 0  # a rerun finds the same set-up
