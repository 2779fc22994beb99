"""``build-dataset evaluate``: does the dataset teach a real classifier?

Trains an expression classifier on a released build (synthetic images only, or
mixed with a real training set), tests it on a real labelled set, and writes
the numbers, the per-sample predictions, a confusion-matrix figure and a data
card section into ``OUT/eval/``. Modules, in the order the command uses them:

- ``run``: the settings (``Evaluation``, ``LabelledSet``) and the run (``evaluate``);
- ``sources``: the build's training split, real labelled sets (a saved
  ``datasets`` dataset or an image folder);
- ``labels``: label maps aligned by canonical emotion name, coverage of both sides;
- ``overlap``: exact and near duplicates between the training data and the test set,
  refused before training unless allowed;
- ``faces``: face crops aligned like the curation stages (MTCNN, 5 landmarks), cached;
- ``guard``: refuses an evaluator that guided or labelled the build;
- ``backbones`` (+ ``ir50``): transformers backbones by Hub id or folder, IR-50 in torch;
- ``train``: seeded fine-tuning or linear probing, the real/synthetic mix per epoch;
- ``metrics``: accuracy, macro accuracy, per-class F1, confusion (also from saved predictions);
- ``report``: the predictions file and the confusion figure (the card's section is
  ``cards.evaluation_section``, which reads the result JSON);
- ``sweep``: scaling over nested class-balanced subsets, real + synthetic ratios, several test sets and seeds,
  one combined JSON and figure.

``build-dataset fidelity`` (how far the release's images lie from a real set) reuses ``sources`` and ``labels``:

- ``fidelity``: the settings (``Fidelity``) and the run, ``OUT/fidelity/fidelity.json`` and ``.md``;
- ``encoders``: CLIP, DINOv2 or other transformers image encoders by Hub id or folder, safetensors only;
- ``distances``: Frechet distance and KID (torchmetrics, on the encoder's features), mean pairwise distance.

``build-dataset audit`` (what attribute classifiers see, against what the manifest prompted): ``audit`` (the run,
the mapping of prompted values to groups, agreement and total variation distance) and ``attribute_classifier``
(image-classification models by Hub id or folder). ``build-dataset report`` lives in ``cards.report``: it reads
these JSON files only.

Importing this package (and ``evaluation.report``) loads no torch.
"""
from __future__ import annotations
