"""The 'images' section: label an existing collection instead of generating."""
from __future__ import annotations

from typing import Annotated

from pydantic import Field, model_validator

from builder.core.config import Strict, fail
from builder.manifest.common import ADDED_LATER


class ImagesSource(Strict):
    """Label an existing collection of face images instead of generating them (SyntFER's pseudo-labelling)."""

    folder: str | None = Field(default=None, min_length=1, description="Folder of images (png, jpg, jpeg, webp, "
                               "bmp, gif, tif, tiff), read in sorted path order; hidden files and folders, other "
                               "formats and dangling links are skipped and counted per reason.")
    recursive: bool = Field(default=True, description="With folder: include images in sub-folders.")
    follow_links_outside: Annotated[bool, ADDED_LATER] = Field(
        default=False, description="With folder: also read symbolic links that resolve outside the folder. By "
        "default they are skipped (counted as link_outside_folder), so no file outside images.folder is read.")
    dataset: str | None = Field(default=None, min_length=1, description="A Hugging Face dataset saved with "
                                "save_to_disk (a Dataset or a DatasetDict), instead of folder.")
    split: str = Field(default="train", min_length=1, description="With dataset: the split to read from a "
                       "DatasetDict.")
    image_column: str = Field(default="image", min_length=1, description="With dataset: the column holding the "
                              "images.")
    top_k_per_class: int | None = Field(
        default=None, gt=0,
        description="Keep at most this many images per class, the most confident first (ties by sample id); "
        "labelling.min_confidence sets the confidence threshold. Omit to keep every image that passes it.",
    )

    @model_validator(mode="after")
    def _one_source(self) -> ImagesSource:
        if (self.folder is None) == (self.dataset is None):
            raise fail("images_source", "needs exactly one of 'folder' and 'dataset'",
                        "give 'folder: PATH' (a folder of images) or 'dataset: PATH' (a save_to_disk folder)")
        return self
