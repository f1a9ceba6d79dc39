"""Images for image classification: image folders, opening and checking every image, training augmentation.

An image column may hold ``datasets.Image`` values (decoded or not), file paths or encoded bytes (PNG, JPEG ...).
The column is kept undecoded (``{"bytes", "path"}``) until a batch is built, so that fingerprints hash the files'
bytes, not Python objects, and the driver can open every image once to fail before Ray starts. Augmentation is
PIL only (no torchvision needed) and seeded through Python's ``random`` (``transformers.set_seed`` seeds it).
"""

from __future__ import annotations

import io
import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import datasets

from hfray.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def is_image_folder(path: Path) -> bool:
    """A folder of class folders holding images (``train/cat/1.png``, ``train/dog/2.jpg`` ...)."""
    return path.is_dir() and any(sub.is_dir() and _image_files(sub) for sub in path.iterdir())


def load_image_folder(path: Path, field: str) -> datasets.Dataset:
    """An image folder as columns ``image`` (file paths, undecoded) and ``label`` (the class folder's name)."""
    classes = sorted(sub for sub in path.iterdir() if sub.is_dir() and not sub.name.startswith("."))
    rows: dict[str, list[Any]] = {"image": [], "label": []}
    for sub in classes:
        for file in _image_files(sub):
            rows["image"].append({"bytes": None, "path": str(file)})
            rows["label"].append(sub.name)
    if not rows["image"]:
        raise DataError(f"{field}: image folder {path} has no images in class folders ({', '.join(IMAGE_SUFFIXES)})")
    features = datasets.Features({"image": datasets.Image(decode=False), "label": datasets.Value("string")})
    return datasets.Dataset.from_dict(rows, features=features)


def undecoded(ds: datasets.Dataset, column: str, key: str, field: str) -> datasets.Dataset:
    """``ds`` with ``column`` as undecoded ``datasets.Image`` values, or a DataError naming the job key."""
    feature = ds.features[column]
    if isinstance(feature, datasets.Image) and not feature.decode:
        return ds
    try:
        return ds.cast_column(column, datasets.Image(decode=False))
    except Exception as exc:  # datasets raises several types for columns it cannot cast
        raise DataError(
            f"{field}: {key} {column!r} holds {feature}, not images (datasets Image, file paths or image bytes): "
            f"{type(exc).__name__}: {str(exc)[:200]}"
        ) from None


def open_image(value: Any) -> Any:
    """A loaded ``PIL.Image`` from a datasets Image value, a path, bytes or a PIL image; raises on a bad image."""
    from PIL import Image

    if isinstance(value, Image.Image):
        return value
    if isinstance(value, dict):
        value = value.get("bytes") or value.get("path")
    if value is None:
        raise ValueError("no image (neither bytes nor a path)")
    image = Image.open(io.BytesIO(value) if isinstance(value, bytes) else value)
    image.load()
    return image


def describe_value(value: Any) -> str:
    if isinstance(value, dict) and value.get("path"):
        return str(value["path"])
    return "image bytes" if isinstance(value, (dict, bytes)) else repr(value)[:80]


def check_images(ds: datasets.Dataset, column: str, key: str, field: str) -> None:
    """Open every image of ``column``: an unreadable one fails here, naming split, row and file. File paths must be
    absolute: Ray workers run in another working directory."""
    for i, value in enumerate(ds[column]):
        path = value.get("path") if isinstance(value, dict) and not value.get("bytes") else None
        if path and not os.path.isabs(path):
            raise DataError(f"{field} row {i}: {key} {column!r}: {path!r} is a relative path; give absolute paths")
        try:
            open_image(value)
        except Exception as exc:  # PIL raises UnidentifiedImageError, OSError, ValueError ...
            raise DataError(
                f"{field} row {i}: {key} {column!r}: cannot read {describe_value(value)} as an image "
                f"({type(exc).__name__}: {str(exc)[:200]})"
            ) from None


def augmenter(
    crop_scale_min: float = 1.0,
    rotation_degrees: float = 0.0,
    horizontal_flip: bool = False,
    brightness: float = 0.0,
    contrast: float = 0.0,
) -> Callable[[Any], Any]:
    """A random change of a PIL image (an ``image_classification.augmentation`` section's settings)."""
    from PIL import Image, ImageEnhance, ImageOps

    def augment(image: Any) -> Any:
        if crop_scale_min < 1.0:
            w, h = image.size
            side = random.uniform(crop_scale_min, 1.0) ** 0.5
            cw, ch = max(1, round(w * side)), max(1, round(h * side))
            left, top = random.randint(0, w - cw), random.randint(0, h - ch)
            image = image.crop((left, top, left + cw, top + ch)).resize((w, h), Image.Resampling.BILINEAR)
        if rotation_degrees:
            image = image.rotate(random.uniform(-rotation_degrees, rotation_degrees), Image.Resampling.BILINEAR)
        if horizontal_flip and random.random() < 0.5:
            image = ImageOps.mirror(image)
        if brightness:
            image = ImageEnhance.Brightness(image).enhance(random.uniform(1 - brightness, 1 + brightness))
        if contrast:
            image = ImageEnhance.Contrast(image).enhance(random.uniform(1 - contrast, 1 + contrast))
        return image

    return augment
