"""Identity-leak gate: face embeddings, a reference index of real people, and the stage that drops lookalikes.

``embedders`` (dlib ResNet or an insightface ArcFace ONNX model behind one
interface), ``images`` (reading photos, finding the face to embed), ``index`` (FAISS index types), ``folder`` (the
index folder: append, commit, read, search), ``reference`` (``build-dataset
index-reference``), ``calibrate`` (threshold from verification pairs at a
target false-match rate) and ``leak`` (the ``identity_leak`` stage and its
report). Perceptual hashes of the reference images come from
``curation.hashing``. Importing this package loads no model and no FAISS.
"""
