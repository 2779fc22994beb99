"""The 'images' section: label an existing collection instead of generating."""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from builder.core.config import Strict, fail
from builder.manifest.common import ADDED_LATER


class SourceLabels(Strict):
    """Where an images source's own labels are: a CSV file (folder sources) or a dataset column."""

    csv: str | None = Field(default=None, min_length=1, description="A CSV of file,label (a header row with "
                            "'file' and 'label', or two columns); file paths relative to images.folder.")
    column: str | None = Field(default=None, min_length=1, description="With a dataset: the column of labels.")

    @model_validator(mode="after")
    def _one(self) -> SourceLabels:
        if (self.csv is None) == (self.column is None):
            raise fail("source_labels", "needs exactly one of 'csv' and 'column'",
                       "give {{csv: FILE}} for a folder of images or {{column: NAME}} for a dataset")
        return self


class ImageCollection(Strict):
    """A collection of existing face images: a folder or a saved dataset (the images and edit sources)."""

    folder: str | None = Field(default=None, min_length=1, description="Folder of images (png, jpg, jpeg, webp, "
                               "bmp, gif, tif, tiff), read in sorted path order; hidden files and folders, other "
                               "formats and dangling links are skipped and counted per reason.")
    recursive: bool = Field(default=True, description="With folder: include images in sub-folders.")
    follow_links_outside: Annotated[bool, ADDED_LATER] = Field(
        default=False, description="With folder: also read symbolic links that resolve outside the folder. By "
        "default they are skipped (counted as link_outside_folder), so no file outside the folder is read.")
    dataset: str | None = Field(default=None, min_length=1, description="A Hugging Face dataset saved with "
                                "save_to_disk (a Dataset or a DatasetDict), instead of folder.")
    split: str = Field(default="train", min_length=1, description="With dataset: the split to read from a "
                       "DatasetDict.")
    image_column: str = Field(default="image", min_length=1, description="With dataset: the column holding the "
                              "images.")

    @model_validator(mode="after")
    def _one_source(self):
        if (self.folder is None) == (self.dataset is None):
            raise fail("images_source", "needs exactly one of 'folder' and 'dataset'",
                        "give 'folder: PATH' (a folder of images) or 'dataset: PATH' (a save_to_disk folder)")
        return self


class ImagesSource(ImageCollection):
    """Label an existing collection of face images instead of generating them (SyntFER's pseudo-labelling)."""

    labels: Annotated[Literal["none", "folder-names"] | SourceLabels, ADDED_LATER] = Field(
        default="none", description="The images' own expression labels, kept as each image's class: 'folder-names' "
        "(the name of the folder an image is in, e.g. happy/001.jpg), {csv: FILE} (rows of file,label; paths "
        "relative to images.folder) or {column: NAME} (a dataset column of class names or label-map indices); "
        "names in any spelling of the built-in label maps. 'none' (default): the labellers give the classes.")
    license: Annotated[str | None, ADDED_LATER] = Field(
        default=None, min_length=1, max_length=100, description="Licence of the source images: an SPDX id (e.g. "
        "cc-by-nc-sa-4.0) or 'other'; required with 'annotate', shown in the card, and `push` refuses a release "
        "of images without one.")
    top_k_per_class: int | None = Field(
        default=None, gt=0,
        description="Keep at most this many images per class, the most confident first (ties by sample id); "
        "labelling.min_confidence sets the confidence threshold. Omit to keep every image that passes it.",
    )

    @model_validator(mode="after")
    def _labels_fit(self) -> ImagesSource:
        labels = self.labels
        if labels == "folder-names" and self.folder is None:
            raise fail("source_labels", "'folder-names' needs a folder source", "use labels: {{column: NAME}} with a "
                       "dataset", at="labels")
        if isinstance(labels, SourceLabels) and (labels.csv is not None) != (self.folder is not None):
            raise fail("source_labels", "{what} does not fit this source", "use {{csv: FILE}} with a folder and "
                       "{{column: NAME}} with a dataset", at="labels", what="csv" if labels.csv else "column")
        return self

    @property
    def has_labels(self) -> bool:
        """True when the images carry their own expression labels."""
        return self.labels != "none"
