import numpy as np
import pytest
import torch

from leanformer.data.images import ImageBatches, bits_per_dim, image_to_tokens, load_images, tokens_to_image
from leanformer.errors import UserError
from leanformer.models.hourglass import Hourglass, HourglassConfig


def gradient_images(n: int, h: int = 6, w: int = 5, seed: int = 42) -> np.ndarray:
    """Smooth generated images: a random base colour plus horizontal and vertical ramps."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 128, size=(n, 1, 1, 3))
    ramp = (np.arange(h)[:, None, None] * 9 + np.arange(w)[None, :, None] * 5)
    return (base + ramp[None]).clip(0, 255).astype(np.uint8)


def write_folder(tmp_path, images):
    from PIL import Image

    for i, img in enumerate(images):
        sub = tmp_path / ("a" if i % 2 else "b")
        sub.mkdir(exist_ok=True)
        Image.fromarray(img).save(sub / f"img{i:03d}.png")
    return tmp_path


def test_tokens_are_raster_order_with_interleaved_channels_and_round_trip():
    img = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    tok = image_to_tokens(img)
    assert tok[:6].tolist() == [0, 1, 2, 3, 4, 5]  # pixel (0,0) RGB then pixel (0,1) RGB
    assert np.array_equal(tokens_to_image(tok, 2, 3), img)


def test_folder_loader_splits_resizes_and_keeps_pixels(tmp_path):
    imgs = gradient_images(20)
    write_folder(tmp_path, imgs)
    splits = {s: load_images(tmp_path, s, size=None) for s in ("train", "validation", "test")}
    assert {s: len(v) for s, v in splits.items()} == {"train": 16, "validation": 2, "test": 2}
    everything = np.concatenate(list(splits.values()))
    assert sorted(map(bytes, everything)) == sorted(image_to_tokens(i).astype(np.uint8).tobytes() for i in imgs)
    small = load_images(tmp_path, "train", size=(3, 2))
    assert small.shape == (16, 3 * 2 * 3)
    grey = load_images(tmp_path, "test", size=None, channels=1)
    assert grey.shape == (2, 6 * 5)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="holds no"):
        load_images(tmp_path / "empty", "train")
    with pytest.raises(UserError, match="different sizes"):
        write_folder(tmp_path / "a", [np.zeros((2, 2, 3), np.uint8)])
        load_images(tmp_path, "train", size=None)


def test_hf_dataset_object_is_read_from_its_image_column():
    datasets = pytest.importorskip("datasets")
    imgs = gradient_images(4)
    from PIL import Image

    ds = datasets.Dataset.from_dict({"img": [Image.fromarray(i) for i in imgs]},
                                    features=datasets.Features({"img": datasets.Image()}))
    out = load_images(ds, size=None, image_field="img")
    assert np.array_equal(out, imgs.reshape(4, -1))
    with pytest.raises(UserError, match="no column 'image'"):
        load_images(ds)


def test_hourglass_learns_generated_images_below_the_uniform_8_bits_per_dim():
    imgs = gradient_images(64).reshape(64, -1)  # 90 subpixels each
    batches = ImageBatches(imgs, batch_size=8, seed=0)
    assert torch.equal(batches.batch(3)["labels"], ImageBatches(imgs, 8, 0).batch(3)["labels"])
    b = batches.batch(0)
    assert torch.equal(b["input_ids"][:, 1:], b["labels"][:, :-1]) and bool((b["input_ids"][:, 0] == 257).all())
    model = Hourglass(HourglassConfig(vocab_size=260, d_model=32, n_heads=4, hierarchy="1@1 1@3 1@1",
                                      max_seq_len=96))
    start = bits_per_dim(model, imgs[:16])
    assert start == pytest.approx(np.log2(260), abs=0.1)  # near-uniform at init
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for i in range(40):
        loss, _ = model.compute_loss(batches.batch(i))
        loss.backward()
        opt.step()
        opt.zero_grad()
    assert bits_per_dim(model, imgs[:16]) < 6.5
