"""Check a data card's YAML metadata the way the Hub does, offline.

The Hub validates a dataset card's metadata on upload (``/api/validate-yaml``,
which needs the network). This module runs the same rules that ship in the
installed libraries, so a release can be checked before it is pushed:

- the YAML block parses with ``datasets``' duplicate-key-refusing loader and
  is a mapping;
- ``size_categories``, ``annotations_creators`` and ``language_creators`` take
  values from the vocabularies ``datasets`` ships (``datasets/utils/resources``);
- ``configs`` passes ``datasets.utils.metadata.MetadataConfigs``'s own check
  (the one ``load_dataset`` runs), config names are unique and one is default;
- ``license`` is one of the Hub's licence ids (``HUB_LICENSES``, copied from
  the Hub's documented list), and ``license: other`` comes with ``license_name``
  (an id for the licence) and ``license_link`` (a URL or a file of the repo), as
  the Hub's card specification asks;
- ``task_categories`` are Hub task ids (``HUB_TASKS``, the image and
  classification part of the Hub's list: enough for this tool's cards).
"""
from __future__ import annotations

import json
from importlib import resources

HUB_LICENSES = frozenset("""
apache-2.0 mit openrail bigscience-openrail-m creativeml-openrail-m bigscience-bloom-rail-1.0 bigcode-openrail-m
afl-3.0 artistic-2.0 bsl-1.0 bsd bsd-2-clause bsd-3-clause bsd-3-clause-clear c-uda cc cc0-1.0 cc-by-2.0
cc-by-2.5 cc-by-3.0 cc-by-4.0 cc-by-sa-3.0 cc-by-sa-4.0 cc-by-nc-2.0 cc-by-nc-3.0 cc-by-nc-4.0 cc-by-nd-4.0
cc-by-nc-nd-3.0 cc-by-nc-nd-4.0 cc-by-nc-sa-2.0 cc-by-nc-sa-3.0 cc-by-nc-sa-4.0 cdla-sharing-1.0
cdla-permissive-1.0 cdla-permissive-2.0 wtfpl ecl-2.0 epl-1.0 epl-2.0 etalab-2.0 eupl-1.1 eupl-1.2 agpl-3.0 gfdl
gpl gpl-2.0 gpl-3.0 lgpl lgpl-2.1 lgpl-3.0 isc h-research intel-research lppl-1.3c ms-pl apple-ascl
apple-amlr mpl-2.0 odc-by odbl openmdw-1.0 openrail++ osl-3.0 postgresql ofl-1.1 ncsa unlicense zlib pddl
lgpl-lr deepfloyd-if-license fair-noncommercial-research-license llama2 llama3 llama3.1 llama3.2 llama3.3
llama4 grok2-community gemma unknown other
""".split())

HUB_TASKS = frozenset("""
image-classification image-segmentation object-detection image-to-text text-to-image image-to-image
image-feature-extraction zero-shot-image-classification unconditional-image-generation
text-classification tabular-classification video-classification audio-classification other
""".split())


def _vocabulary(name: str):
    return json.loads(resources.files("datasets.utils.resources").joinpath(name).read_text())


def validate_card_text(text: str) -> list[str]:
    """Problems with the YAML metadata of a README (empty: it passes)."""
    import yaml
    from datasets.utils.metadata import _NoDuplicateSafeLoader, _split_yaml_from_readme

    block, _ = _split_yaml_from_readme(text)
    if block is None:
        return ["the card has no YAML metadata block"]
    try:
        data = yaml.load(block, Loader=_NoDuplicateSafeLoader)
    except yaml.YAMLError as exc:
        return [f"the YAML block does not parse: {exc}"]
    if not isinstance(data, dict):
        return ["the YAML block is not a mapping"]
    return validate_metadata(data)


def validate_metadata(data: dict) -> list[str]:
    problems = []
    sizes = set(_vocabulary("size_categories.json"))
    creators = _vocabulary("creators.json")
    for value in _as_list(data.get("size_categories")):
        if value not in sizes:
            problems.append(f"size_categories: {value!r} is not one of {sorted(sizes)}")
    for key, vocab in (("annotations_creators", creators["annotations"]), ("language_creators", creators["language"])):
        for value in _as_list(data.get(key)):
            if value not in vocab:
                problems.append(f"{key}: {value!r} is not one of {vocab}")
    for value in _as_list(data.get("license")):
        if value not in HUB_LICENSES:
            problems.append(f"license: {value!r} is not a Hub licence id")
    if "other" in _as_list(data.get("license")):
        for key in ("license_name", "license_link"):
            if not isinstance(data.get(key), str) or not data[key].strip():
                problems.append(f"{key}: 'license: other' needs it (the licence's id and a link to its text)")
    for value in _as_list(data.get("task_categories")):
        if value not in HUB_TASKS:
            problems.append(f"task_categories: {value!r} is not a Hub task id")
    for key in ("tags", "pretty_name"):
        if key in data and not all(isinstance(v, str) for v in _as_list(data[key])):
            problems.append(f"{key}: must be text")
    problems += _configs(data.get("configs"))
    return problems


def _configs(configs) -> list[str]:
    if configs is None:
        return []
    from datasets.utils.metadata import MetadataConfigs

    if not isinstance(configs, list) or not all(isinstance(c, dict) for c in configs):
        return ["configs: must be a list of mappings"]
    names = [c.get("config_name") for c in configs]
    problems = []
    if len(set(names)) != len(names) or None in names:
        problems.append(f"configs: config names must be given and unique, got {names}")
    if sum(bool(c.get("default")) for c in configs) > 1:
        problems.append("configs: more than one default config")
    for config in configs:
        try:
            MetadataConfigs._raise_if_data_files_field_not_valid(config)
        except ValueError as exc:
            problems.append(f"configs: {config.get('config_name')}: {exc}")
    return problems


def _as_list(value) -> list:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]
