"""Images as byte sequences for autoregressive image modelling (the second domain of Hourglass, Nawrot et al., 2022,
after PixelCNN / Image Transformer practice): an ``H×W×C`` uint8 image is read in raster order with its subpixels
interleaved (``R G B R G B ...``), so a 32×32 RGB image is 3072 tokens in ``0..255``. A model sees
``[BOS] + subpixels`` (BOS = :attr:`ByteTokenizer.bos_id`, so byte-level models with ``vocab_size=260`` need no
change) and predicts every subpixel; with the leading BOS, shortening factor 3 groups exactly one pixel's RGB
triplet. The metric is **bits per dimension**: mean negative log2-likelihood per subpixel.

Sources: a folder of image files (``*.png``, ``*.jpg``, ``*.jpeg``, ``*.bmp``, ``*.gif``, ``*.webp``, recursively,
sorted by path; split by index as text folders are: ``i % 10 == 3`` validation, ``i % 10 == 7`` test) or a Hugging
Face image dataset (``hf:<name>``, or a ``datasets.Dataset`` object) with an image column. Images are converted to
RGB (or L when ``channels=1``) and resized to ``size`` with a box filter when they differ.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from leanformer.data.tokenizers import ByteTokenizer
from leanformer.errors import UserError

__all__ = ["IMAGE_SUFFIXES", "image_to_tokens", "tokens_to_image", "load_images", "ImageBatches", "bits_per_dim"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
BOS = ByteTokenizer.bos_id


def image_to_tokens(image: np.ndarray) -> np.ndarray:
    """``[H, W, C]`` (or ``[H, W]``) uint8 -> ``[H·W·C]`` int64 subpixels in raster order, channels interleaved."""
    a = np.asarray(image)
    if a.dtype != np.uint8:
        raise UserError(f"images must be uint8, got {a.dtype}")
    return a.reshape(-1).astype(np.int64)


def tokens_to_image(tokens, height: int, width: int, channels: int = 3) -> np.ndarray:
    """Inverse of :func:`image_to_tokens` (values clipped to 0..255)."""
    t = np.asarray(tokens, dtype=np.int64)
    if t.size != height * width * channels:
        raise UserError(f"{t.size} tokens do not make a {height}x{width}x{channels} image")
    return np.clip(t, 0, 255).astype(np.uint8).reshape(height, width, channels)


def _to_array(img, size: tuple[int, int] | None, channels: int) -> np.ndarray:
    from PIL import Image

    if not isinstance(img, Image.Image):
        img = Image.fromarray(np.asarray(img, dtype=np.uint8))
    img = img.convert("RGB" if channels == 3 else "L")
    if size is not None and img.size != (size[1], size[0]):
        img = img.resize((size[1], size[0]), Image.Resampling.BOX)
    return np.asarray(img, dtype=np.uint8)


def _split_index(i: int) -> str:
    return "validation" if i % 10 == 3 else "test" if i % 10 == 7 else "train"


def load_images(spec, split: str = "train", size: tuple[int, int] | None = (32, 32), channels: int = 3,
                image_field: str = "image", max_images: int | None = None) -> np.ndarray:
    """Subpixel sequences ``[N, H·W·C]`` uint8 of one split of an image folder, ``hf:<name>`` or a
    ``datasets.Dataset``; all images must share one size (give ``size`` to resize)."""
    if split not in ("train", "validation", "test"):
        raise UserError(f"unknown split {split!r}; choose one of train, validation, test")
    if channels not in (1, 3):
        raise UserError(f"channels={channels}: choose 1 (grey) or 3 (RGB)")
    if not isinstance(spec, (str, Path)):
        images = _hf_column(spec, image_field, max_images)
    elif str(spec).startswith("hf:"):
        images = _load_hf(str(spec)[3:], split, image_field, max_images)
    else:
        root = Path(spec)
        if not root.is_dir():
            raise UserError(f"image source {str(spec)!r} is not a folder or 'hf:<dataset>'")
        files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise UserError(f"image folder {spec} holds no {'/'.join(IMAGE_SUFFIXES)} files")
        images = [f for i, f in enumerate(files) if _split_index(i) == split][:max_images]
    from PIL import Image

    arrays = []
    for img in images:
        if isinstance(img, Path):
            with Image.open(img) as im:
                arrays.append(_to_array(im, size, channels))
        else:
            arrays.append(_to_array(img, size, channels))
    if not arrays:
        raise UserError(f"image source {spec!r} has no images in split {split!r}")
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise UserError(f"images have different sizes {sorted(shapes)[:3]}; pass size=(H, W) to resize them")
    return np.stack([a.reshape(-1) for a in arrays])


def _hf_column(ds, image_field: str, max_images: int | None) -> list:
    if image_field not in ds.column_names:
        raise UserError(f"image dataset has no column {image_field!r}; columns: {ds.column_names}")
    if max_images is not None:
        ds = ds.select(range(min(max_images, len(ds))))
    return list(ds[image_field])


def _load_hf(name: str, split: str, image_field: str, max_images: int | None) -> list:
    try:
        import datasets
    except ImportError:
        raise UserError("Hugging Face image datasets need the 'datasets' package") from None
    try:
        ds = datasets.load_dataset(name)
    except Exception as e:  # datasets raises many types; all mean "cannot load this"
        raise UserError(f"cannot load Hugging Face dataset {name!r}: {str(e).splitlines()[0]}") from None
    alias = {"validation": ("validation", "valid", "val"), "test": ("test",), "train": ("train",)}[split]
    found = next((s for s in alias if s in ds), None)
    if found is not None:
        return _hf_column(ds[found], image_field, max_images)
    first = ds["train"] if "train" in ds else ds[list(ds.keys())[0]]
    keep = [i for i in range(len(first)) if _split_index(i) == split][:max_images]
    return _hf_column(first.select(keep), image_field, None)


class ImageBatches:
    """Training batches of whole images: ``batch(i)`` (deterministic in ``(seed, i)``) gives ``input_ids =
    [BOS] + subpixels[:-1]`` and ``labels = subpixels``, both ``[batch_size, H·W·C]``."""

    def __init__(self, images: np.ndarray, batch_size: int, seed: int = 0):
        self.images, self.batch_size, self.seed = np.asarray(images), batch_size, seed

    def batch(self, index: int) -> dict[str, torch.Tensor]:
        rows = np.random.default_rng([self.seed, index]).integers(0, len(self.images), size=self.batch_size)
        return as_batch(self.images[rows])


def as_batch(images: np.ndarray) -> dict[str, torch.Tensor]:
    y = torch.from_numpy(np.asarray(images).astype(np.int64))
    x = torch.cat([torch.full_like(y[:, :1], BOS), y[:, :-1]], 1)
    return {"input_ids": x, "labels": y}


@torch.no_grad()
def bits_per_dim(model, images: np.ndarray, batch_size: int = 8, device="cpu",
                 autocast_dtype: torch.dtype | None = None) -> float:
    """Mean negative log2-likelihood per subpixel of ``images [N, H·W·C]`` under ``model(input_ids) -> logits``."""
    was_training = model.training
    model.eval()
    device = torch.device(device)
    nll, n = 0.0, 0
    for i in range(0, len(images), batch_size):
        b = as_batch(images[i:i + batch_size])
        x, y = b["input_ids"].to(device), b["labels"].to(device)
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            logits = model(x)
        nll += float(F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="sum"))
        n += y.numel()
    model.train(was_training)
    return nll / n / math.log(2)
