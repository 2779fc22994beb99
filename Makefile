# Two commands for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: demo faces label-photos edit-demo training-pairs train-generator test install schema clean

demo: $(STAMP)
	$(BIN)/build-dataset manifests/demo.yaml --out out/demo

# Real face photos from installed packages, then the images-source example on them.
faces: $(STAMP)
	$(BIN)/python -m builder.example_faces out/faces

label-photos: faces
	$(BIN)/build-dataset manifests/label-photos.yaml --out out/label-photos

# The same photos edited to other expressions (the tiny pipeline's edits are not faces: every one is dropped
# and counted, hence --allow-empty; see README "Editing the expression of existing faces").
edit-demo: faces
	$(BIN)/build-dataset manifests/edit-demo.yaml --out out/edit-demo --allow-empty

# Generator training pairs (aligned faces, captions) from the same photos.
training-pairs: faces
	$(BIN)/build-dataset manifests/training-pairs.yaml --out out/training-pairs

train-generator: training-pairs
	$(BIN)/build-dataset train-generator manifests/train/generator-demo.yaml

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

install: $(STAMP)

# torch first, alone: the CPU wheel on disk; every other package is held to
# constraints.txt so nothing can pull a CUDA torch or torchvision.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check "torch==2.13.0"
	$(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[test]"
# insightface pulls opencv-python, fiftyone opencv-python-headless (same pinned version); both write cv2/
# and the last one installed wins. Reinstall the headless build last so cv2 is always the GUI-less one.
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps --force-reinstall -c constraints.txt opencv-python-headless
	touch $(STAMP)

schema: $(STAMP)
	$(BIN)/build-dataset schema --write

clean:
	rm -rf out .pytest_cache
