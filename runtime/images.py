"""Image files -> normalised pixel tensors, as CLIP's preprocessing does: RGB, shortest side resized to the
model's image size (bicubic), centre crop, scaled to [0, 1], normalised by CLIP's mean and std."""

import os
from pathlib import Path

import torch

from zoo.errors import ZooError, require

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


class ImageError(ZooError):
    """An image file that is missing or cannot be decoded."""


def load_image(path: str | os.PathLike, size: int) -> torch.Tensor:
    """The pixels (3, size, size) float32 of an image file, CLIP-normalised."""
    image_module = require("PIL.Image", "retrieval")
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"no such image file: {path}")
    try:
        with image_module.open(path) as image:
            image = image.convert("RGB")
    except (OSError, ValueError, image_module.DecompressionBombError) as exc:
        raise ImageError(f"cannot read {path} as an image: {exc}") from exc
    scale = size / min(image.size)
    width, height = max(size, round(image.width * scale)), max(size, round(image.height * scale))
    image = image.resize((width, height), image_module.Resampling.BICUBIC)
    left, top = (width - size) // 2, (height - size) // 2
    image = image.crop((left, top, left + size, top + size))
    pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).view(size, size, 3)
    pixels = pixels.permute(2, 0, 1).float() / 255.0
    return (pixels - torch.tensor(CLIP_MEAN)[:, None, None]) / torch.tensor(CLIP_STD)[:, None, None]


def image_files(directory: str | os.PathLike) -> list[Path]:
    """The image files of a directory (by suffix), sorted by name; an error when there are none."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ImageError(f"no such image directory: {directory}")
    files = sorted(p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ImageError(f"{directory} holds no image files ({', '.join(IMAGE_SUFFIXES)})")
    return files
