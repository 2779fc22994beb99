"""Regenerate tests/manifest/bad/ (run from the repository root). Each case: a small valid
manifest with one defect, and the substrings its error message must contain."""
import re
from pathlib import Path

base = """name: bad
seed: 1
labels: {counts: 2}
prompts:
  templates: ["a photo of a {age} person with a {expression} face"]
  axes:
    age: {values: [young, old]}
generator: {model: "builtin:tiny-sd", steps: 4, height: 64, width: 64}
"""
images_base = """name: bad
seed: 1
labels: {label_map: affectnet7}
images: {folder: no/such/folder}
labelling:
  experts: [{name: fer, model: mini-xception-fer2013}]
"""
def sub(old, new):
    assert old in base, old
    return base.replace(old, new, 1)
# "(line N)" in expectations counts lines of the manifest body; the header shifts it.
cases = {
 "wrong-type-steps": (sub("steps: 4", "steps: many"), ["field 'generator.steps' (line 8)", "valid integer", "fix: set generator.steps to a whole number"]),
 "float-steps": (sub("steps: 4", "steps: 4.5"), ["field 'generator.steps' (line 8)", "fractional part", "fix: set generator.steps to a whole number"]),
 "unknown-top-key": (base + "generatr: {}\n", ["field 'generatr' (line 9)", "unknown key", "fix: did you mean 'generator'?"]),
 "unknown-nested-key": (sub("steps: 4", "step: 4"), ["field 'generator.step' (line 8)", "unknown key", "did you mean 'steps'?", "keys allowed here: au_adapter, batch_size"]),
 "missing-name": (sub("name: bad\n", ""), ["field 'name'", "required field is missing", "fix: add 'name': Dataset name"]),
 "missing-generator": (base.replace('generator: {model: "builtin:tiny-sd", steps: 4, height: 64, width: 64}\n', ""), ["field 'generator'", "required field is missing", "fix: add 'generator'"]),
 "missing-model": (sub('model: "builtin:tiny-sd", ', ""), ["field 'generator.model' (line 8)", "required field is missing", "Hugging Face Hub id"]),
 "negative-count": (sub("counts: 2", "counts: {happy: -3}"), ["field 'labels.counts.happy' (line 3)", "greater than or equal to 0", "fix: set labels.counts.happy to a value >= 0"]),
 "unknown-label": (sub("counts: 2", "counts: {joy: 5}"), ["field 'labels.counts.joy' (line 3)", "'joy' is not a class of label map affectnet7", "fix: use one of: neutral, happy"]),
 "unknown-label-rafdb": (sub("counts: 2", "label_map: rafdb, counts: {happy: 5}"), ["field 'labels.counts.happy'", "not a class of label map rafdb", "happiness"]),
 "unknown-au": (base + "aus:\n  intensity:\n    happy: {AU99: 2.0}\n", ["field 'aus.intensity.happy.AU99' (line 11)", "not in AU set disfa12", "fix: use AUs of disfa12 (AU1, AU2"]),
 "au-not-in-set": (base + "aus:\n  au_set: disfa8\n  intensity:\n    happy: {AU5: 2.0}\n", ["field 'aus.intensity.happy.AU5' (line 12)", "not in AU set disfa8", "pick another aus.au_set"]),
 "au-out-of-range": (base + "aus:\n  intensity:\n    happy: {AU12: 7}\n", ["field 'aus.intensity.happy.AU12' (line 11)", "less than or equal to 5", "a value <= 5"]),
 "intensity-unknown-class": (base + "aus:\n  intensity:\n    joy: {AU12: 3}\n", ["field 'aus.intensity.joy' (line 11)", "names class 'joy'", "fix: use one of"]),
 "bad-yaml-syntax": (sub("labels: {counts: 2}", "labels: {counts: 2"), ["YAML syntax error", "(line 4", "fix: fix the YAML"]),
 "tab-indentation": (sub("  templates:", "\ttemplates:"), ["YAML syntax error", "(line 5", "'\\t'"]),
 "splits-sum": (base + "output: {splits: {train: 0.8, test: 0.1}}\n", ["field 'output.splits' (line 9)", "sum to 0.9, not 1", "fix: scale the fractions so they add up to 1, e.g. {train: 0.8"]),
 "template-placeholder": (sub("with a {expression} face", "with a {mood} face"), ["field 'prompts.templates.0' (line 5)", "'{mood}'", "fix: add an axis named 'mood'"]),
 "template-braces": (sub("with a {expression} face", "with a {expression face"), ["field 'prompts.templates.0' (line 5)", "not valid format syntax", "write '{{' and '}}'"]),
 "weights-length": (sub("{values: [young, old]}", "{values: [young, old], weights: [1]}"), ["field 'prompts.axes.age.weights' (line 7)", "has 1 weights for 2 values", "one positive weight per value"]),
 "zero-weight": (sub("{values: [young, old]}", "{values: [young, old], weights: [1, 0]}"), ["field 'prompts.axes.age.weights.1' (line 7)", "greater than 0", "a value > 0"]),
 "reserved-axis": (sub("    age: {values: [young, old]}", "    label: {values: [young, old]}").replace("{age}", "{label}"), ["field 'prompts.axes.label' (line 7)", "axis name 'label' is not allowed", "lower-case identifier"]),
 "bad-dtype": (sub("steps: 4", "steps: 4, dtype: fp16"), ["field 'generator.dtype' (line 8)", "(got 'fp16')", "fix: set generator.dtype to one of 'auto', 'float32', 'float16' or 'bfloat16'"]),
 "bad-label-map": (sub("counts: 2", "label_map: affectnet, counts: 2"), ["field 'labels.label_map' (line 3)", "fix: set labels.label_map to one of 'affectnet7'"]),
 "zero-total": (sub("counts: 2", "counts: 0"), ["field 'labels' (line 3)", "asks for 0 samples", "fix: give at least one class a positive count"]),
 "height-not-multiple": (sub("height: 64", "height: 100"), ["field 'generator.height' (line 8)", "multiple of 8", "fix: set generator.height to a multiple of 8"]),
 "bad-device": (sub("steps: 4", "steps: 4, device: gpu"), ["field 'generator.device' (line 8)", "(got 'gpu')", "'cuda:N'"]),
 "negative-seed": (sub("seed: 1", "seed: -1"), ["field 'seed' (line 2)", "greater than or equal to 0", "fix: set seed to a value >= 0"]),
 "bad-name": (sub("name: bad", "name: My Dataset"), ["field 'name' (line 1)", "should match pattern", "lower-case letters"]),
 "shard-size-zero": (base + "output: {shard_size: 0}\n", ["field 'output.shard_size' (line 9)", "greater than 0", "a value > 0"]),
 "top-level-list": ("- name: bad\n- seed: 1\n", ["must be a YAML mapping at the top level, found list", "fix: start from manifests/demo.yaml"]),
 "empty": ("# nothing here\n", ["is empty", "fix: start from manifests/demo.yaml"]),
 "prompts-not-mapping": (sub('prompts:\n  templates: ["a photo of a {age} person with a {expression} face"]\n  axes:\n    age: {values: [young, old]}\n', "prompts: hello\n"), ["field 'prompts' (line 4)", "(got 'hello')", "fix: make prompts a mapping"]),
 "au-adapter-negative-scale": (sub('steps: 4', 'steps: 4, au_adapter: {path: adapters/x, scale: -1}'), ["field 'generator.au_adapter.scale' (line 8)", "greater than or equal to 0", "a value >= 0"]),
 "au-adapter-missing-path": (sub('steps: 4', 'steps: 4, au_adapter: {scale: 0.5}'), ["field 'generator.au_adapter.path' (line 8)", "required field is missing", "au_adapter_config.json"]),
 "au-adapter-unknown-key": (sub('steps: 4', 'steps: 4, au_adapter: {path: a, weight: 1}'), ["field 'generator.au_adapter.weight' (line 8)", "unknown key", "keys allowed here: path, scale"]),
 "guidance-window": (sub('steps: 4', 'steps: 4, guidance: {start_step: 6}'), ["field 'generator.guidance' (line 8)", "guidance steps 6..4 do not fit in 4 denoising steps", "0 <= guidance.start_step < guidance.end_step <= generator.steps"]),
 "guidance-wrt": (sub('steps: 4', 'steps: 4, guidance: {wrt: pixels}'), ["field 'generator.guidance.wrt' (line 8)", "(got 'pixels')", "one of 'text' or 'latents'"]),
 "guidance-zero-scale": (sub('steps: 4', 'steps: 4, guidance: {scale: 0}'), ["field 'generator.guidance.scale' (line 8)", "greater than 0", "a value > 0"]),
 "template-source-both": (sub('prompts:\n', 'prompts:\n  template_set: syntfer\n'), ["field 'prompts' (line 4)", "needs exactly one of 'templates' and 'template_set'", "template_set: syntfer"]),
 "template-set-unknown": (sub('  templates: ["a photo of a {age} person with a {expression} face"]\n', '  template_set: grid\n'), ["field 'prompts.template_set' (line 5)", "(got 'grid')", "'syntfer'"]),
 "layout-missing-images": (sub('steps: 4', 'steps: 4, layout: {folder: refs}'), ["field 'generator.layout.folder' (line 8)", "unknown key", "keys allowed here: images"]),
 "enrich-zero-tokens": (sub('    age: {values: [young, old]}\n', '    age: {values: [young, old]}\n  enrich: {model: lm, max_new_tokens: 0}\n'), ["field 'prompts.enrich.max_new_tokens' (line 8)", "greater than 0", "a value > 0"]),
 "labelling-duplicate-expert": (base + "labelling:\n  experts:\n    - {name: fer, model: mini-xception-fer2013}\n    - {name: fer, model: other.yaml}\n", ["field 'labelling.experts' (line 10)", "expert name 'fer' is used twice", "fix: give every expert its own name"]),
 "labelling-combine-unknown": (base + "labelling:\n  experts: [{name: fer, model: mini-xception-fer2013}]\n  combine: median\n", ["field 'labelling.combine' (line 11)", "'product' or 'weighted_vote'"]),
 "labelling-no-experts": (base + "labelling:\n  experts: []\n", ["field 'labelling' (line 9)", "has no labeller", "fix: list at least one expert"]),
 "labelling-confidence-range": (base + "labelling:\n  experts: [{name: fer, model: mini-xception-fer2013}]\n  min_confidence: 1.5\n", ["field 'labelling.min_confidence' (line 11)", "less than or equal to 1", "a value <= 1"]),
 "counts-list": (sub("counts: 2", "counts: [1, 2]"), ["field 'labels.counts' (line 3)", "valid integer", "whole number"]),
 "images-with-generator": (base + "images: {folder: photos}\nlabelling:\n  experts: [{name: fer, model: mini-xception-fer2013}]\n", ["field 'generator' (line 8)", "is not used with an 'images' source", "fix: remove 'generator'"]),
 "images-two-sources": (images_base.replace("{folder: no/such/folder}", "{folder: a, dataset: b}"), ["field 'images' (line 4)", "needs exactly one of 'folder' and 'dataset'", "dataset: PATH"]),
 "images-no-labelling": (images_base.split("labelling:")[0], ["field 'labelling'", "required field is missing", "fix: add a 'labelling' section"]),
 "images-missing-folder": (images_base, ["images.folder 'no/such/folder' is not a folder", "fix: point images.folder at a folder"]),
 "images-top-k-zero": (images_base.replace("{folder: no/such/folder}", "{folder: x, top_k_per_class: 0}"), ["field 'images.top_k_per_class' (line 4)", "greater than 0"]),
 "images-with-au-targets": (images_base + "aus:\n  intensity:\n    happy: {AU12: 3}\n", ["field 'aus.intensity'", "is not used with an 'images' source", "existing images have no AU targets"]),
 "labelling-reserved-name": (base + "labelling:\n  experts: [{name: feranno, model: mini-xception-fer2013}]\n", ["field 'labelling.experts'", "reserved for the FERAnno labeller", "labelling.feranno"]),
 "embedder-without-model": (base + "curation:\n  embedder: {backend: insightface}\n", ["field 'curation.embedder' (line 10)", "the insightface backend needs 'model'", "fix: set model: to the path of an ArcFace .onnx file"]),
 "identities-without-threshold": (base + "curation:\n  identities: {max_per_identity: 3}\n", ["field 'curation.identities.threshold'", "required field is missing"]),
 "dedupe-similarity-above-one": (base + "curation:\n  dedupe: {embedding_similarity: 1.5}\n", ["field 'curation.dedupe.embedding_similarity' (line 10)", "less than or equal to 1"]),
 "missing-counts": (sub("labels: {counts: 2}", "labels: {label_map: affectnet7}"), ["field 'labels.counts'", "required field is missing", "fix: add 'counts'", "Required when generating"]),
}
out = Path("tests/manifest/bad")
out.mkdir(parents=True, exist_ok=True)
for f in out.glob("*.yaml"):
    f.unlink()
for i, (name, (text, expects)) in enumerate(cases.items(), 1):
    shift = len(expects)
    expects = [re.sub(r"\(line (\d+)", lambda m, shift=shift: f"(line {int(m.group(1)) + shift}", e) for e in expects]
    (out / f"{i:02d}-{name}.yaml").write_text("".join(f"# expect: {e}\n" for e in expects) + text)
(out / f"{len(cases)+1:02d}-not-utf8.yaml").write_bytes("# expect: is not UTF-8 text\n# expect: fix: save the manifest as UTF-8\nname: caf\xe9\n".encode("latin-1"))
print(len(list(out.glob("*.yaml"))))
