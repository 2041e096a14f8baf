import logging
import math
import re

import numpy as np
import pytest
import torch
from conftest import write_image

from pneumolab.config import AugmentConfig, DataConfig
from pneumolab.data.cache import load_cache
from pneumolab.data.datamodule import ChestXrayDataModule
from pneumolab.data.index import index_source
from pneumolab.data.manifest import Manifest
from pneumolab.errors import InputError, LeakageError


def _dm(data_dir, **kw) -> ChestXrayDataModule:
    dm = ChestXrayDataModule(DataConfig(data_dir=data_dir, image_size=32, batch_size=8, num_workers=0, **kw))
    dm.setup()
    return dm


def _all(loader) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*loader, strict=True)
    return torch.cat(xs), torch.cat(ys)


def test_batches_and_normalisation_from_train_only(prepared_dir) -> None:
    dm = _dm(prepared_dir)
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (8, 1, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    m = Manifest.load(prepared_dir)
    arr = load_cache(m, 32, prepared_dir / "cache")
    train = arr[m.indices("train")].astype(np.float64) / 255
    assert dm.mean == pytest.approx(train.mean(), abs=1e-9) and dm.std == pytest.approx(train.std(), abs=1e-9)
    everything = arr.astype(np.float64) / 255
    assert dm.mean != pytest.approx(everything.mean(), abs=1e-6)  # val/test pixels did not shape the statistics


def test_augmentation_never_touches_val_or_test(prepared_dir) -> None:
    dm = _dm(prepared_dir, augment=AugmentConfig(rotation_deg=20, translate=0.1))
    m = Manifest.load(prepared_dir)
    arr = load_cache(m, 32, prepared_dir / "cache")
    for split, loader in (("val", dm.val_dataloader), ("test", dm.test_dataloader)):
        x1, _ = _all(loader())
        x2, _ = _all(loader())
        assert torch.equal(x1, x2)
        expected = (torch.from_numpy(arr[m.indices(split)].astype(np.float32) / 255)[:, None] - dm.mean) / dm.std
        assert torch.allclose(x1, expected, atol=1e-5)
    torch.manual_seed(0)
    t1 = dm.datasets["train"][0][0]
    t2 = dm.datasets["train"][0][0]
    assert not torch.equal(t1, t2)  # train items are augmented afresh each time


def test_class_weights_and_sampler(prepared_dir) -> None:
    dm = _dm(prepared_dir)
    counts = np.bincount(dm.train_targets, minlength=2)
    n = counts.sum()
    assert dm.class_weights().tolist() == pytest.approx([n / (2 * counts[0]), n / (2 * counts[1])])
    sampled = _dm(prepared_dir, balance="sampler")
    assert sampled.class_weights().tolist() == [1.0, 1.0]
    torch.manual_seed(0)
    ys = torch.cat([y for _ in range(20) for _, y in sampled.train_dataloader()])
    assert abs(ys.float().mean().item() - 0.5) < 0.05  # the sampler balances the classes


def test_per_image_normalisation(prepared_dir) -> None:
    dm = _dm(prepared_dir, normalization="per_image")
    x, _ = _all(dm.val_dataloader())
    assert torch.allclose(x.mean(dim=(1, 2, 3)), torch.zeros(len(x)), atol=1e-4)
    assert dm.preprocessing().normalization == "per_image"


def test_requires_a_split(kaggle_dir, tmp_path) -> None:
    out = tmp_path / "unsplit"
    index_source(kaggle_dir, out, workers=1)
    m = Manifest.load(out)
    m.with_splits([r.split if r.split != "val" else "train" for r in m.records]).save(out)
    with pytest.raises(InputError, match="pneumolab data split"):
        _dm(out)


def _synthetic_set(tmp_path, split: str = "train", source: str = "synthetic"):
    src = tmp_path / "gan"
    for i in range(6):
        write_image(src / ("PNEUMONIA" if i % 2 else "NORMAL") / f"fake_{i}.png", seed=5000 + i)
    rows = [f"{'PNEUMONIA' if i % 2 else 'NORMAL'}/fake_{i}.png,{i % 2}" for i in range(6)]
    (src / "list.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    out = tmp_path / "gan_set"
    m = index_source(src / "list.csv", out, workers=1).manifest
    from dataclasses import replace

    Manifest(m.root, [replace(r, source=source, split=split) for r in m.records], m.meta).save(out)
    return out


def test_synthetic_images_only_enter_the_training_loader(prepared_dir, tmp_path) -> None:
    plain = _dm(prepared_dir)
    syn = _dm(prepared_dir, synthetic=[_synthetic_set(tmp_path)])
    assert len(syn.datasets["train"]) == len(plain.datasets["train"]) + 6
    assert len(syn.datasets["val"]) == len(plain.datasets["val"])
    assert len(syn.datasets["test"]) == len(plain.datasets["test"])
    assert syn.mean == plain.mean  # statistics from real training images only


def test_a_real_set_cannot_be_smuggled_in_as_synthetic(prepared_dir, tmp_path) -> None:
    with pytest.raises(LeakageError, match="only source=synthetic"):
        _dm(prepared_dir, synthetic=[_synthetic_set(tmp_path, source="real")])


def test_duplicate_real_control_adds_copies_of_training_images_only(prepared_dir) -> None:
    plain = _dm(prepared_dir)
    dup = _dm(prepared_dir, duplicate_real={"NORMAL": 5, "PNEUMONIA": 7})
    assert len(dup.datasets["train"]) == len(plain.datasets["train"]) + 12
    assert len(dup.datasets["val"]) == len(plain.datasets["val"])
    extra = dup.datasets["train"].datasets[-1]
    m = Manifest.load(prepared_dir)
    assert all(m.records[i].split == "train" for i in extra.indices)
    assert sorted(extra.targets) == [0] * 5 + [1] * 7
    assert dup.class_weights().tolist() != plain.class_weights().tolist()


def test_the_per_image_preset_is_the_batched_policy_on_one_image() -> None:
    from pneumolab.data.transforms import BatchTrainPreset, TrainPreset

    aug = AugmentConfig(
        border_erase=0.25, brightness=0.3, contrast=0.4, scale=(0.9, 1.25), hflip=True, blur=1.0, noise=0.05, gamma=0.3
    )
    x = torch.randint(0, 256, (1, 32, 32), dtype=torch.uint8)
    before = x.clone()
    torch.manual_seed(3)
    one = TrainPreset(mean=0.5, std=0.25, augment=aug)(x)
    torch.manual_seed(3)
    batch = BatchTrainPreset(mean=0.5, std=0.25, augment=aug)(x[None])
    assert one.shape == (1, 32, 32) and torch.equal(one, batch[0])  # the same draws give the same image
    assert torch.equal(x, before)  # the cached image is not modified in place


def _batch_preset(out_size: int | None = None, **aug):
    from pneumolab.data.transforms import BatchTrainPreset

    still = {"rotation_deg": 0, "translate": 0, "scale": (1.0, 1.0), "brightness": 0, "contrast": 0}
    return BatchTrainPreset(mean=0.5, std=0.25, augment=AugmentConfig(**{**still, **aug}), out_size=out_size)


def test_batched_augmentation_without_randomness_is_the_eval_preset() -> None:
    from pneumolab.data.transforms import EvalPreset

    x = torch.randint(0, 256, (4, 1, 24, 24), dtype=torch.uint8)
    want = torch.stack([EvalPreset(mean=0.5, std=0.25)(img) for img in x])
    torch.testing.assert_close(_batch_preset()(x), want, atol=1e-5, rtol=0)  # identity grid = the input pixels


def test_the_affine_grid_is_torchs_affine_grid() -> None:
    from pneumolab.data.transforms import _affine_grid

    torch.manual_seed(0)
    theta = torch.randn(5, 2, 3)  # rotation, stretch, shear and shift at once
    for h, w in ((1, 1), (7, 7), (64, 64), (5, 9)):
        want = torch.nn.functional.affine_grid(theta, [5, 1, h, w], align_corners=False)
        torch.testing.assert_close(_affine_grid(theta, h, w), want, atol=1e-6, rtol=0)


@pytest.mark.parametrize("normalization", ["dataset", "per_image", "equalize"])
def test_the_eval_preset_gives_torchvisions_pixels_bit_for_bit(normalization) -> None:
    # The preset no longer imports torchvision for its dtype conversion and standardisation (an import of ~1.5 s):
    # every model file trained before must still see the same pixels, to the last bit.
    from torchvision.transforms import v2

    from pneumolab.data.transforms import EvalPreset, PerImageStandardize

    x = torch.randint(0, 256, (5, 1, 32, 48), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    norm = v2.Normalize([0.48], [0.237]) if normalization == "dataset" else PerImageStandardize()
    steps = [v2.RandomEqualize(p=1.0)] if normalization == "equalize" else []
    want = v2.Compose([*steps, v2.ToDtype(torch.float32, scale=True), norm])(x)
    assert torch.equal(EvalPreset(mean=0.48, std=0.237, normalization=normalization)(x), want)


def test_batched_zoom_and_brightness_match_hand_computed_values() -> None:
    x = torch.zeros(3, 1, 32, 32, dtype=torch.uint8)
    x[:, :, 12:20, 12:20] = 255  # an 8x8 white square in the centre
    zoomed = _batch_preset(scale=(2.0, 2.0))(x) * 0.25 + 0.5  # undo the normalisation -> [0, 1]
    # 2x zoom about the centre: the square covers the middle 16x16 (bilinear: inner 14x14 exactly white)
    assert (zoomed[:, :, 9:23, 9:23] == 1).all() and (zoomed[:, :, :7] == 0).all() and (zoomed[:, :, 25:] == 0).all()
    assert zoomed.sum(dim=(1, 2, 3)).tolist() == pytest.approx([256.0] * 3, abs=8)
    torch.manual_seed(0)
    grey = torch.full((200, 1, 8, 8), 100, dtype=torch.uint8)
    out = _batch_preset(brightness=0.3)(grey) * 0.25 + 0.5
    factor = out[:, 0, 0, 0] / (100 / 255)  # one factor per image, constant over its pixels
    assert torch.allclose(out, out[:, :, :1, :1].expand_as(out))
    assert factor.min() >= 0.7 - 1e-5 and factor.max() <= 1.3 + 1e-5 and factor.std() > 0.1  # U(0.7, 1.3) per image


def test_batched_border_erase_is_random_per_sample() -> None:
    torch.manual_seed(0)
    x = torch.full((200, 1, 40, 40), 255, dtype=torch.uint8)
    out = _batch_preset(border_erase=0.25)(x) * 0.25 + 0.5
    erased = (out[:, 0] == 0).flatten(1).any(1)
    assert 60 <= int(erased.sum()) <= 140  # about half the images of one batch
    widths = set()
    for o in out[erased, 0]:
        m = int((o[20] == 0).sum()) // 2
        assert (o[:m] == 0).all() and (o[-m:] == 0).all() and (o[:, :m] == 0).all() and (o[m:-m, m:-m] == 1).all()
        widths.add(m)
    assert max(widths) <= 10 and len(widths) > 3
    torch.manual_seed(1)
    a = _batch_preset(rotation_deg=10, translate=0.1)(x[:8])
    torch.manual_seed(1)
    torch.testing.assert_close(a, _batch_preset(rotation_deg=10, translate=0.1)(x[:8]))  # seeded: reproducible
    assert len({tuple(img.flatten().tolist()) for img in a}) == 8  # but every sample of the batch differs


def test_batched_loader_yields_raw_batches_that_the_trainer_augments(prepared_dir) -> None:
    import lightning as L

    dm = _dm(prepared_dir, normalization="per_image", augment=AugmentConfig(batched=True, rotation_deg=10))
    raw, _ = next(iter(dm.train_dataloader()))
    assert raw.dtype == torch.uint8 and raw.shape == (8, 1, 32, 32)
    val, _ = next(iter(dm.val_dataloader()))
    assert val.dtype == torch.float32  # val/test keep the per-image EvalPreset, never augmented

    seen: list[torch.Tensor] = []

    class Probe(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(()))

        def training_step(self, batch, batch_idx):
            seen.append(batch[0])
            return self.w * batch[0].float().mean()

        def validation_step(self, batch, batch_idx):  # the DataModule has a val loader: Lightning warns without one
            pass

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    trainer = L.Trainer(fast_dev_run=1, accelerator="cpu", logger=False, enable_progress_bar=False)
    trainer.fit(Probe(), datamodule=dm)
    x = seen[0]
    assert x.dtype == torch.float32 and x.shape == (8, 1, 32, 32)
    assert x.mean(dim=(1, 2, 3)).abs().max() < 1e-4  # normalised per image, by the DataModule's hook


def test_views_concatenate_independent_augmentations_with_the_targets_repeated(prepared_dir) -> None:
    aug = {"batched": True, "rotation_deg": 10, "translate": 0.1, "aspect": 0.5}
    dm = _dm(prepared_dir, normalization="per_image", augment=AugmentConfig(**aug, views=3))
    one = _dm(prepared_dir, normalization="per_image", augment=AugmentConfig(**aug))
    raw, y = next(iter(dm.train_dataloader()))
    torch.manual_seed(0)
    x3, y3 = dm.on_after_batch_transfer([raw, y], 0)
    assert x3.shape == (24, 1, 32, 32) and torch.equal(y3, y.repeat(3))  # row v * 8 + i: view v of image i
    torch.manual_seed(0)  # the same draws as three single-view calls, one after the other
    torch.testing.assert_close(x3, torch.cat([one.on_after_batch_transfer([raw, y], 0)[0] for _ in range(3)]))
    assert not torch.equal(x3[:8], x3[8:16])  # the views of one image differ
    with pytest.raises(ValueError, match=r"views=2 augments whole batches: set data\.augment\.batched=true"):
        AugmentConfig(views=2)


def test_batched_blur_matches_torchvision_per_image_and_spares_the_other_half() -> None:
    from torchvision.transforms.v2 import functional as TF

    from pneumolab.data.transforms import _gaussian_blur

    x = torch.rand(3, 1, 32, 32)
    sigma = torch.tensor([0.0, 1.0, 2.0])
    out = _gaussian_blur(x, sigma)
    assert torch.equal(out[0], x[0])  # sigma 0: a delta kernel
    for i in (1, 2):  # radius ceil(3 * max sigma) = 6 for every image: torchvision with kernel 13, reflect padding
        torch.testing.assert_close(out[i], TF.gaussian_blur(x[i : i + 1], [13, 13], [float(sigma[i])] * 2)[0])
    torch.manual_seed(0)
    edges = torch.zeros(200, 1, 64, 64, dtype=torch.uint8)
    edges[..., 32:] = 255  # a vertical step edge: blurred images get grey pixels beside it
    blurred = _batch_preset(blur=1.0)(edges) * 0.25 + 0.5
    grey = ((blurred > 1e-4) & (blurred < 1 - 1e-4)).flatten(1).any(1)
    assert 50 <= int(grey.sum()) <= 120  # half the batch, less those with sigma < ~0.23 (neighbour weight < 1e-4)
    assert blurred[:, :, 0, 31].max() < 0.5 < blurred[:, :, 0, 32].min()  # the edge stays where it was


def test_batched_noise_has_a_random_std_per_image() -> None:
    torch.manual_seed(0)
    grey = torch.full((200, 1, 32, 32), 128, dtype=torch.uint8)
    out = _batch_preset(noise=0.1)(grey) * 0.25 + 0.5
    std = out.flatten(1).std(1)  # per image: U(0, 0.1) (mid-grey: clamping is negligible)
    assert std.max() <= 0.1 + 0.01 and std.min() < 0.02 and 0.04 < float(std.mean()) < 0.06
    torch.testing.assert_close(out.mean(), torch.tensor(128 / 255), atol=2e-3, rtol=0)  # zero-mean noise


def test_batched_gamma_bends_the_grey_scale_by_one_curve_per_image() -> None:
    torch.manual_seed(0)
    ramp = torch.tensor([0, 64, 128, 255], dtype=torch.uint8).repeat(200, 1, 4, 1)  # (200, 1, 4, 4)
    out = _batch_preset(gamma=0.5)(ramp) * 0.25 + 0.5
    g = out[:, 0, 0, 2].log() / math.log(128 / 255)  # each image's exponent, read off its mid-grey pixel
    assert g.min() > math.exp(-0.5) - 1e-4 and g.max() < math.exp(0.5) + 1e-4  # exp(U(-0.5, 0.5)): 0.61 to 1.65
    assert g.min() < 0.7 and g.max() > 1.5 and abs(float(g.log().mean())) < 0.06
    torch.testing.assert_close(out[:, 0, 0, 1], (64 / 255) ** g)  # the same curve at every grey level
    assert (out[:, 0, :, 0] == 0).all() and (out[:, 0, :, 3] == 1).all()  # black and white stay where they are


def test_batched_aspect_stretch_changes_width_against_height_and_keeps_the_area() -> None:
    torch.manual_seed(0)
    x = torch.zeros(200, 1, 64, 64, dtype=torch.uint8)
    x[:, :, 16:48, 16:48] = 255  # a 32x32 white square in the centre
    out = _batch_preset(aspect=0.4)(x) * 0.25 + 0.5
    width = out[:, 0, 32].sum(1)  # (B,) the bright run along the middle row and column, in pixels
    height = out[:, 0, :, 32].sum(1)
    ratio = width / height  # exp(U(-0.4, 0.4)): 0.67 to 1.49, about log-uniform
    assert ratio.min() > 0.67 - 0.03 and ratio.max() < 1.49 + 0.03 and ratio.min() < 0.75 and ratio.max() > 1.35
    assert (width * height).div(32 * 32).sub(1).abs().max() < 0.03  # sqrt(r) wider, sqrt(r) shorter: area kept
    assert abs(float(ratio.log().mean())) < 0.05
    torch.manual_seed(0)
    square = _batch_preset()(x) * 0.25 + 0.5
    assert torch.equal(square[:, 0, 32].sum(1), square[:, 0, :, 32].sum(1))  # aspect 0: no stretch


def _wide_pneumonia(tmp_path, n_norm: int = 15):
    """A prepared dataset whose pneumonia files are 60x40 (width/height 1.5) and normal ones 48x40 (1.2)."""
    from conftest import make_kaggle

    from pneumolab.cli import main

    root = make_kaggle(tmp_path / "src", n_pneu=12, n_norm=n_norm, test=False)
    for i, f in enumerate(sorted(root.glob("*/PNEUMONIA/*.jpeg"))):
        write_image(f, seed=1000 + i, size=(60, 40))
    assert main(["data", "prepare", str(root), "--out", str(tmp_path / "ds"), "--size", "32"]) == 0
    return tmp_path / "ds"


def test_aspect_balance_widens_one_class_and_narrows_the_other_by_half_the_gap(tmp_path) -> None:
    aug = {"rotation_deg": 0, "translate": 0, "scale": (1.0, 1.0), "brightness": 0, "contrast": 0}
    augment = AugmentConfig(**aug, batched=True, aspect_balance=True)
    dm = ChestXrayDataModule(DataConfig(data_dir=_wide_pneumonia(tmp_path), image_size=64, augment=augment))
    dm.setup()
    half = math.log(1.5 / 1.2) / 2  # the medians' gap, halved: 0.1116
    torch.testing.assert_close(dm.batch_augment.aspect_offsets, torch.tensor([-half, half]))  # NORMAL, PNEUMONIA
    x = torch.zeros(2, 1, 64, 64, dtype=torch.uint8)
    x[:, :, 16:48, 16:48] = 255
    out = dm.augment_batch(x, torch.tensor([0, 1]))
    bright = out > out.mean()  # per-image normalisation: the square is what lies above the image's mean
    ratio = bright[:, 0, 32].sum(1) / bright[:, 0, :, 32].sum(1)  # width / height of the square
    assert ratio.tolist() == pytest.approx([math.exp(-half), math.exp(half)], abs=0.07)  # 0.89 and 1.12
    assert torch.equal(dm.augment_batch(x)[0], dm.augment_batch(x)[1])  # no targets (SimCLR): no offset


def test_aspect_balance_says_when_it_cannot_measure_and_refuses_what_it_cannot_apply(
    tmp_path, caplog, monkeypatch
) -> None:
    data = _wide_pneumonia(tmp_path, n_norm=8)  # 16 normal files: too few to measure their proportions
    monkeypatch.setattr(logging.getLogger("pneumolab"), "propagate", True)  # the CLI's own handler stops it
    with caplog.at_level(logging.INFO, logger="pneumolab"):
        dm = _dm(data, augment=AugmentConfig(batched=True, aspect=0.3, aspect_balance=True))
    assert dm.batch_augment.aspect_offsets is None  # the random stretch alone
    assert re.search(r"aspect balance off: it needs >= 20 non-square .*'NORMAL': 1[0-9]", caplog.text)
    with pytest.raises(InputError, match=r"aspect_balance needs data\.augment\.batched=true"):
        _dm(data, augment=AugmentConfig(aspect_balance=True))


def test_supersampled_images_are_augmented_at_their_size_then_resized_with_antialiasing() -> None:
    v = torch.tensor([0, 255, 0, 0, 255, 255, 128, 51], dtype=torch.uint8)
    x = v.repeat_interleave(2).expand(1, 1, 16, 16)  # 2-pixel-wide columns, constant down each column
    out = _batch_preset(out_size=8)(x) * 0.25 + 0.5
    # A 2x antialiased bilinear downsample weighs 4 source columns 1/8, 3/8, 3/8, 1/8 (a triangle over 2 output
    # pixels): 3/4 of the column pair plus 1/8 of each neighbour; at the edge the 3 taps left are renormalised.
    p = v.double() / 255
    interior = [0.75 * p[j] + (p[j - 1] + p[j + 1]) / 8 for j in range(1, 7)]
    want = [(6 * p[0] + p[1]) / 7, *interior, (6 * p[7] + p[6]) / 7]
    assert out.shape == (1, 1, 8, 8)
    torch.testing.assert_close(out[0, 0], torch.tensor(want).float().expand(8, 8), atol=1e-5, rtol=0)

    # Why: a zoom resampled at the model's size interpolates between its pixels (a low-pass); resampled at twice
    # the size and then reduced, it keeps the detail of the image.
    g = torch.Generator().manual_seed(0)
    fine = torch.randint(0, 256, (8, 1, 64, 64), dtype=torch.uint8, generator=g)
    small = torch.nn.functional.interpolate(fine.float(), size=(32, 32), mode="bilinear", antialias=True).round()

    def detail(img: torch.Tensor) -> float:  # mean squared difference between horizontal neighbours, [0, 1] scale
        img = img * 0.25 + 0.5
        return float((img[..., 1:] - img[..., :-1]).pow(2).mean())

    from_source = _batch_preset(out_size=32, scale=(1.25, 1.25))(fine)
    at_size = _batch_preset(out_size=32, scale=(1.25, 1.25))(small.to(torch.uint8))
    assert from_source.shape == at_size.shape == (8, 1, 32, 32)
    assert detail(from_source) > 2 * detail(at_size)  # 0.0120 against 0.0037 here


def test_supersample_feeds_the_training_loader_and_the_calibration_views_only(prepared_dir) -> None:
    from torch import nn

    from pneumolab.evaluation.predict import validation_logits

    aug = AugmentConfig(batched=True, rotation_deg=10, supersample=1.5)
    assert aug.source_size(32) == 48
    dm = _dm(prepared_dir, normalization="per_image", augment=aug)
    raw, y = next(iter(dm.train_dataloader()))
    assert raw.dtype == torch.uint8 and raw.shape == (8, 1, 48, 48)  # the 48 px cache
    x, _ = dm.on_after_batch_transfer([raw, y], 0)
    assert x.shape == (8, 1, 32, 32)  # what the model takes
    assert next(iter(dm.val_dataloader()))[0].shape == (8, 1, 32, 32)  # val/test: the model's size, never augmented
    with pytest.raises(InputError, match=r"supersample=1\.5 x 32 px, not at the model's size"):
        dm.eval_loader("train")
    # Calibration views are drawn from the same larger cache and resized as the training batches are: a model that
    # takes only 32 x 32 inputs scores them.
    manifest, val = Manifest.load(prepared_dir), Manifest.load(prepared_dir).indices("val")
    model = nn.Sequential(nn.Flatten(), nn.Linear(32 * 32, 2))
    logits = validation_logits(model, dm.preprocessing(), manifest, val, prepared_dir / "cache", augment=aug, views=2)
    assert logits.shape == (2 * len(val), 2)
    with pytest.raises(ValueError, match=r"supersample=2\.0 augments whole batches: set data\.augment\.batched=true"):
        AugmentConfig(supersample=2)
