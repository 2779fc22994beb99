"""The 'caption_check' stage on crafted captions: each drop reason, the flag and off modes, token counts equal
to the text encoder's tokenizer (built-in, a local diffusers folder, a cached Hub id), and the expression
words it reads."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from builder.annotate.caption_check import (
    EXPRESSION_WORDS,
    CaptionCheck,
    expressions_named,
    label_agreement,
    words,
)
from builder.core.errors import ModelLoadError
from builder.core.records import Record
from builder.core.stage import ShardContext
from builder.manifest.annotate import CaptionChecks
from builder.manifest.label_maps import ALIASES, EXPRESSION_TEXT, LABEL_MAPS
from builder.models.captioners import load_text_tokenizer

NAMES = LABEL_MAPS["affectnet7"]
LONG = "a close-up photo of a person with a happy facial expression: " + ", ".join(["lips slightly parted"] * 30)


@pytest.fixture(scope="module")
def clip_tokenizer(tiny_model):
    """The tiny pipeline's own CLIP tokenizer, loaded independently of the stage."""
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(tiny_model / "tokenizer")


def record(text: str | None, label: str = "happy", index: int = 0) -> Record:
    return Record(sample_id=f"pairs-{index:07d}", index=index, label=NAMES.index(label) if label in NAMES else -1,
                  label_name=label, au=[], attributes={"caption_source": "template"}, prompt="", negative_prompt="",
                  seed=0, image=f"shards/caption/00000/images/{index}.png", text=text)


def check(records: list[Record], tmp_path: Path, **spec) -> list[Record]:
    stage = CaptionCheck(CaptionChecks(**spec), NAMES)
    stage.setup()
    ctx = ShardContext(root=tmp_path, shard=0, staging=tmp_path / "staging", final=tmp_path / "final")
    out = list(stage.process(records, ctx))
    assert [r.sample_id for r in out] == [r.sample_id for r in records]
    return out


def reasons(out: list[Record]) -> list[str | None]:
    return [r.drop.reason if r.drop else None for r in out]


def test_each_drop_reason(tmp_path, clip_tokenizer):
    out = check([
        record("a smiling face"),  # 3 words
        record(LONG),
        record("a close-up photo of a person crying, tears on the cheeks"),  # sad words, label happy
        record("a close-up photo of a person with raised cheeks"),  # no expression word
        record("a close-up photo of a person with a happy facial expression"),
        record(None),
    ], tmp_path)
    assert reasons(out) == ["caption_too_short", "caption_too_long", "caption_label_mismatch",
                            "caption_label_mismatch", None, "caption_too_short"]
    assert all(r.drop.stage == "caption_check" for r in out if r.drop)
    assert out[0].drop.detail.startswith("3 words, fewer than 5")
    tokens = len(clip_tokenizer(LONG)["input_ids"])
    assert tokens > 77 and out[1].drop.detail.startswith(f"{tokens} tokens, more than 77")
    assert "'crying' (sad), 'tears' (sad)" in out[2].drop.detail and "not the label 'happy'" in out[2].drop.detail
    assert "no expression word" in out[3].drop.detail
    assert out[4].attributes["caption_agrees"] == "yes"


def test_token_counts_equal_the_tokenizer(tmp_path, clip_tokenizer):
    texts = ["a close-up photo of a person with a happy facial expression", LONG, "smiling " * 12,
             "a close-up photo of a person with an angry facial expression: brows strongly lowered and drawn together",
             "ÜNICODE façade — 😀 a happy, happy person"]
    out = check([record(t, index=i) for i, t in enumerate(texts)], tmp_path, label_agreement="off", min_words=1,
                max_tokens=1024)
    for r, text in zip(out, texts):
        expected = len(clip_tokenizer(text, add_special_tokens=True)["input_ids"])
        assert r.scores["caption_tokens"] == expected, text
        bos, eos = clip_tokenizer.bos_token_id, clip_tokenizer.eos_token_id
        assert clip_tokenizer(text)["input_ids"][0] == bos and clip_tokenizer(text)["input_ids"][-1] == eos


def test_the_token_limit_is_inclusive(tmp_path, clip_tokenizer):
    text = "a close-up photo of a person with a happy facial expression"
    n = len(clip_tokenizer(text)["input_ids"])
    assert reasons(check([record(text)], tmp_path, max_tokens=max(8, n))) == [None]
    assert reasons(check([record(text)], tmp_path, max_tokens=n - 1)) == ["caption_too_long"]


def test_flag_mode_keeps_a_mismatch_marked(tmp_path):
    out = check([record("a close-up photo of a person crying with tears"),
                 record("a close-up photo of a grinning person"),
                 record("a close-up photo of a person with a neutral face", label="")], tmp_path,
                label_agreement="flag")
    assert reasons(out) == [None, None, None]
    assert [r.attributes["caption_agrees"] for r in out] == ["no", "yes", "n/a"]


def test_off_mode_checks_nothing_but_length(tmp_path):
    out = check([record("a close-up photo of a person crying with tears"), record("crying"), record(LONG)],
                tmp_path, label_agreement="off")
    assert reasons(out) == [None, "caption_too_short", "caption_too_long"]
    assert out[0].attributes["caption_agrees"] == "n/a"


def test_a_record_without_a_label_is_not_dropped_for_its_words(tmp_path):
    out = check([record("a close-up photo of a person crying with tears", label="")], tmp_path)
    assert reasons(out) == [None] and out[0].attributes["caption_agrees"] == "n/a"


def test_columns(tmp_path):
    stage = CaptionCheck(CaptionChecks(label_agreement="flag"), NAMES)
    out = check([record("a close-up photo of a person crying with tears")], tmp_path, label_agreement="flag")[0]
    columns = {c.name: c for c in stage.dataset_columns()}
    assert {n: c.dtype for n, c in columns.items()} == {"caption_tokens": "int64", "caption_agrees": "string"}
    tokens = columns["caption_tokens"].value(out, {})
    assert isinstance(tokens, int) and tokens == out.scores["caption_tokens"]
    assert columns["caption_agrees"].value(out, {}) == "no"
    assert stage.meta()["text_encoder"] == "builtin:tiny-sd"


# -- the expression words ---------------------------------------------------------------------------------------------
def test_every_label_spelling_and_prompt_adjective_is_read():
    for spelling, canon in ALIASES.items():
        assert EXPRESSION_WORDS[spelling] == canon
    for labels in LABEL_MAPS.values():
        for name in labels:
            agrees, _ = label_agreement(f"a photo of a person with a {name} expression", name)
            assert agrees == "yes", name
    assert set(EXPRESSION_WORDS.values()) == set(EXPRESSION_TEXT)


@pytest.mark.parametrize("text, label, agrees", [
    ("a woman smiling broadly, teeth showing", "happy", "yes"),
    ("a man grinning", "happiness", "yes"),  # rafdb's spelling
    ("a frowning man with lowered brows", "anger", "no"),  # 'frown' names no expression on its own
    ("an astonished face, mouth wide open", "surprise", "yes"),
    ("a terrified face", "fear", "yes"),
    ("a scowling face", "angry", "yes"),  # fer2013's spelling
    ("a sneering face", "contempt", "yes"),
    ("an expressionless face", "neutral", "yes"),
    ("a surprised face with a smile", "happy", "yes"),  # a compound agrees with each part
    ("a surprised face with a smile", "surprise", "yes"),
    ("a neutral face, not smiling", "neutral", "yes"),
    ("a neutral face, not smiling", "happy", "no"),  # the smile is negated
    ("a face that is not sad, but angry", "anger", "yes"),  # the negation ends at the comma
    ("a face that is not sad, but angry", "sad", "no"),
    ("she isn't crying", "sad", "no"),
    ("a photo of a person", "", "n/a"),
])
def test_label_agreement(text, label, agrees):
    assert label_agreement(text, label)[0] == agrees


def test_words_and_expressions():
    assert words("A close-up: she isn\u2019t SMILING!") == ["a", "close", "up", "she", "isn't", "smiling"]
    assert expressions_named("happy? no sign of anger, sad") == [("happy", "happy"), ("sad", "sad")]


def test_template_captions_pass_the_default_checks(tmp_path):
    """The template's captions of every class, with the most (and longest) AU cues and the longest pose, fit the
    text encoder and agree with their label: the template leaves out its weakest cues to fit."""
    from PIL import Image

    from builder.annotate.caption import (
        MAX_CUES,
        CaptionStage,
        active_au_cues,
        template_caption,
    )
    from builder.manifest.annotate import Annotate
    from builder.manifest.au_sets import AU_SETS

    names = AU_SETS["opengraphau41"]
    longest = sorted(names[:27], key=lambda n: -len(active_au_cues((n,), [4.0])[0]))[:MAX_CUES + 2]
    au = [4.0 - 0.1 * longest.index(n) if n in longest else 0.0 for n in names]
    Image.new("RGB", (64, 64), (120, 120, 120)).save(tmp_path / "grey.png")
    eyes_mouth = [[20.0, 25.0], [44.0, 25.0], [36.0, 35.0], [22.0, 48.0], [42.0, 48.0]]  # turned slightly right
    labels = LABEL_MAPS["affectnet8"]
    records = [Record(sample_id=f"s{i}", index=i, label=i, label_name=label, au=au, attributes={}, prompt="",
                      negative_prompt="", seed=0, image="grey.png", face={"aligned_landmarks": eyes_mouth})
               for i, label in enumerate(labels)]
    ctx = ShardContext(root=tmp_path, shard=0, staging=tmp_path / "staging", final=tmp_path / "final")
    spec = Annotate(aus={"model": "none", "au_set": "opengraphau41"})
    stage = CaptionStage(spec, labels, 7)
    stage.setup()
    captioned = list(stage.process(records, ctx))
    assert all("black-and-white" in r.text and "head turned slightly to the right" in r.text for r in captioned)
    for r in captioned:  # the weakest cues left out: what remains is the start of the untrimmed caption
        full = template_caption(Record(**{**r.__dict__, "text": None}), Image.open(tmp_path / "grey.png"),
                                "opengraphau41")
        assert full.startswith(r.text) and full.count(", ") > r.text.count(", "), (full, r.text)
    out = check(captioned, tmp_path)
    assert reasons(out) == [None] * len(records), [r.drop.detail for r in out if r.drop]
    assert all(r.attributes["caption_agrees"] == "yes" and r.scores["caption_tokens"] <= 77 for r in out)


# -- the text encoder's tokenizer -------------------------------------------------------------------------------------
def test_a_local_diffusers_folder_counts_the_same(tiny_model, tmp_path):
    copy = tmp_path / "sd"
    shutil.copytree(tiny_model, copy)
    builtin = check([record(LONG)], tmp_path, label_agreement="off", max_tokens=1024)[0]
    local = check([record(LONG)], tmp_path, label_agreement="off", max_tokens=1024, text_encoder=str(copy))[0]
    assert builtin.scores["caption_tokens"] == local.scores["caption_tokens"]


def test_a_cached_hub_text_encoder_loads_offline(tiny_model, clip_tokenizer):
    from huggingface_hub import constants

    commit = "89abcdef0123456789abcdef0123456789abcdef"
    repo_dir = Path(constants.HF_HUB_CACHE) / "models--tester--tiny-sd"
    shutil.copytree(tiny_model / "tokenizer", repo_dir / "snapshots" / commit / "tokenizer")
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(commit)
    try:
        tokenizer = load_text_tokenizer("tester/tiny-sd")
        assert tokenizer(LONG)["input_ids"] == clip_tokenizer(LONG)["input_ids"]
    finally:
        shutil.rmtree(repo_dir)


@pytest.mark.parametrize("ref, expected", [
    ("builtin:other-sd", "'builtin:other-sd' is not a built-in model"),
    ("someone/not-cached-sd", "'someone/not-cached-sd' is not in the local Hugging Face cache"),
    ("./no-such-folder", "'./no-such-folder' does not exist"),
])
def test_a_bad_text_encoder_is_refused(ref, expected, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelLoadError) as info:
        CaptionCheck(CaptionChecks(text_encoder=ref), NAMES).setup()
    message = info.value.render()
    assert message.startswith(f"{ref}: annotate.checks.text_encoder: ") and expected in message, message
    assert "\n  fix: " in message


def test_a_folder_without_a_tokenizer_is_refused(tmp_path):
    (tmp_path / "model_index.json").write_text("{}")
    with pytest.raises(ModelLoadError, match="has no tokenizer/ folder with a CLIP tokenizer"):
        load_text_tokenizer(str(tmp_path))
    (tmp_path / "tokenizer").mkdir()
    (tmp_path / "tokenizer" / "vocab.json").write_text("{}")
    with pytest.raises(ModelLoadError, match="has no tokenizer/ folder with a CLIP tokenizer"):
        load_text_tokenizer(str(tmp_path))
