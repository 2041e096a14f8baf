import csv
import json

import numpy as np
import pytest
import torch
from torch import nn

from pneumolab.cli import main
from pneumolab.config import DataConfig
from pneumolab.data.datamodule import ChestXrayDataModule
from pneumolab.data.manifest import Manifest
from pneumolab.errors import LeakageError
from pneumolab.generative.dcgan import Discriminator, Generator, load_generator, sample_set
from pneumolab.generative.quality import knn_precision_recall, nearest_real_distances


def _pattern(seq: nn.Sequential) -> list[str]:
    return [type(m).__name__ for m in seq]


def test_generator_and_discriminator_follow_the_study() -> None:
    g, d = Generator(), Discriminator()
    x = g(torch.randn(3, 100, 1, 1))
    assert x.shape == (3, 1, 64, 64) and x.min() >= -1 and x.max() <= 1
    assert d(x).shape == (3,) and ((d(x) > 0) & (d(x) < 1)).all()
    # Generator: [ConvT, BN, ReLU] on every layer but the last, which is ConvT + Tanh.
    assert _pattern(g.main) == ["ConvTranspose2d", "BatchNorm2d", "ReLU"] * 4 + ["ConvTranspose2d", "Tanh"]
    assert g.main[0].in_channels == 100 and g.main[12].out_channels == 1
    # Discriminator: first Conv + LeakyReLU (no BN), middle Conv + BN + LeakyReLU, last Conv, flatten, Sigmoid.
    assert _pattern(d.main) == ["Conv2d", "LeakyReLU"] + ["Conv2d", "BatchNorm2d", "LeakyReLU"] * 3 + [
        "Conv2d",
        "Flatten",
        "Sigmoid",
    ]
    assert Generator(128)(torch.randn(1, 100, 1, 1)).shape == (1, 1, 128, 128)
    assert Discriminator(128)(torch.zeros(2, 1, 128, 128)).shape == (2,)


def test_a_few_gan_steps_change_both_networks(sample_data) -> None:
    """Three real ``GanModule.training_step`` calls (Lightning's manual optimisation), one per optimiser pair."""
    import lightning as L
    from torch.utils.data import DataLoader, TensorDataset

    from pneumolab.training.gan import GanModule

    torch.manual_seed(0)
    dm = ChestXrayDataModule(DataConfig(data_dir=sample_data, image_size=64, batch_size=16, num_workers=0))
    dm.setup()
    x, y = next(iter(dm.train_dataloader()))
    module = GanModule(64, 100, 16, 2e-4, 0.5, dm.preprocessing().to_dict(), {})
    g0 = [p.clone() for p in module.generator.parameters()]
    d0 = [p.clone() for p in module.discriminator.parameters()]
    quiet = {"enable_checkpointing": False, "enable_progress_bar": False, "enable_model_summary": False}
    trainer = L.Trainer(max_steps=6, accelerator="cpu", logger=False, **quiet)
    batches = DataLoader(TensorDataset(x.repeat(3, 1, 1, 1), y.repeat(3)), batch_size=len(x))  # 3 batches
    trainer.fit(module, train_dataloaders=batches)
    assert trainer.global_step == 6  # manual optimisation counts each optimiser's step: 3 batches
    logged = trainer.callback_metrics
    assert all(torch.isfinite(logged[k]) for k in ("train/d_loss", "train/g_loss"))
    assert 0 < float(logged["train/D_x"]) < 1 and 0 < float(logged["train/D_G_z"]) < 1
    assert any(not torch.equal(a, b) for a, b in zip(g0, module.generator.parameters(), strict=True))
    assert any(not torch.equal(a, b) for a, b in zip(d0, module.discriminator.parameters(), strict=True))
    real = module._to_tanh_range(x)
    assert real.min() >= -1 and real.max() <= 1 and real.max() > 0.5  # the uint8 range maps onto [-1, 1]


@pytest.fixture(scope="module")
def gan_run(sample_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("gan")
    args = [
        "gan",
        "train",
        "--label",
        "PNEUMONIA",
        "--data",
        str(sample_data),
        f"out_dir={out}",
        "trainer.max_epochs=1",
        "data.num_workers=0",
        "data.batch_size=32",
        "width=16",
    ]
    assert main(args) == 0
    return out / "dcgan_PNEUMONIA"


def test_gan_run_is_trained_on_one_class_of_train_only(gan_run, sample_data) -> None:
    _, meta, sha = load_generator(gan_run)
    m = Manifest.load(sample_data)
    n_train_pneumonia = sum(r.split == "train" and r.label == "PNEUMONIA" for r in m.records)
    assert meta["label"] == "PNEUMONIA" and meta["trained_on"]["split"] == "train"
    assert meta["trained_on"]["images"] == n_train_pneumonia and len(sha) == 64
    with open(gan_run / "history.csv") as f:
        history = list(csv.DictReader(f))
    assert history and {"train/d_loss", "train/g_loss", "train/D_x", "train/D_G_z"} <= set(history[0])
    assert (gan_run / "samples.png").read_bytes()[:4] == b"\x89PNG"


def test_sampling_is_reproducible_and_has_complete_provenance(gan_run, tmp_path) -> None:
    a = sample_set(gan_run, 10, tmp_path / "a", seed=7)
    b = sample_set(gan_run, 10, tmp_path / "b", seed=7)
    c = sample_set(gan_run, 10, tmp_path / "c", seed=8)
    ma, mb, mc = Manifest.load(a), Manifest.load(b), Manifest.load(c)
    assert [r.sha256 for r in ma.records] == [r.sha256 for r in mb.records] != [r.sha256 for r in mc.records]
    assert all(r.source == "synthetic" and r.split == "train" and r.label == "PNEUMONIA" for r in ma.records)
    prov = json.loads((a / "provenance.json").read_text())
    assert {"generator", "generator_sha256", "seed", "n", "label", "source", "image_size", "trained_on"} <= set(prov)
    assert prov["generator_sha256"] == load_generator(gan_run)[2] and prov["seed"] == 7 and prov["n"] == 10


def test_synthetic_images_join_the_training_loader_only(gan_run, sample_data, tmp_path) -> None:
    syn = sample_set(gan_run, 12, tmp_path / "syn", seed=0)
    base = DataConfig(data_dir=sample_data, image_size=32, num_workers=0)
    plain = ChestXrayDataModule(base)
    plain.setup()
    aug = ChestXrayDataModule(base.model_copy(update={"synthetic": [syn]}))
    aug.setup()
    assert len(aug.datasets["train"]) == len(plain.datasets["train"]) + 12
    assert len(aug.datasets["val"]) == len(plain.datasets["val"])
    assert len(aug.datasets["test"]) == len(plain.datasets["test"])
    # Moving the synthetic rows to validation is refused when the set is read.
    text = (syn / "manifest.csv").read_text().replace(",train,synthetic,", ",val,synthetic,")
    (syn / "manifest.csv").write_text(text)
    with pytest.raises(LeakageError, match="synthetic"):
        Manifest.load(syn)


def test_fid_of_a_set_against_itself_is_zero_and_against_noise_large(sample_data, tmp_path) -> None:
    from conftest import tiny_train_args

    from pneumolab.data.cache import load_cache
    from pneumolab.generative.quality import ClassifierFeatures, synthetic_quality

    assert main(tiny_train_args(sample_data, tmp_path, "trainer.max_epochs=1")) == 0
    extractor = ClassifierFeatures(tmp_path / "cnn_base" / "model.pt")
    m = Manifest.load(sample_data)
    arr = load_cache(m, 32, sample_data / "cache")
    train = torch.from_numpy(np.array(arr[m.indices("train")]))[:, None]
    test = torch.from_numpy(np.array(arr[m.indices("test")]))[:, None]
    noise = torch.randint(0, 256, test.shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    same = synthetic_quality(train, train, extractor)
    other = synthetic_quality(train, test, extractor)
    far = synthetic_quality(train, noise, extractor)
    assert abs(same["fid"]) < 1e-6 and same["precision"] == 1.0 and same["recall"] == 1.0
    assert far["fid"] > 10 * other["fid"] and far["precision"] < other["precision"]
    assert "trained on real X-rays" in far["feature_extractor"]


def test_precision_recall_and_memorisation_on_toy_features() -> None:
    rng = np.random.default_rng(0)
    real = rng.normal(0, 1, (200, 4))
    assert knn_precision_recall(real, rng.normal(0, 1, (200, 4)))[0] > 0.8
    assert knn_precision_recall(real, rng.normal(8, 1, (200, 4))) == (0.0, 0.0)
    copies = nearest_real_distances(real, real[:50] + 1e-6)
    assert copies["share_closer_than_real_5th_percentile"] == 1.0


def test_train_on_synthetic_test_on_real(gan_run, sample_data, tmp_path) -> None:
    from conftest import tiny_train_args

    from pneumolab.data.datamodule import train_statistics
    from pneumolab.evaluation.evaluate import evaluate

    args = [
        "gan",
        "train",
        "--label",
        "NORMAL",
        "--data",
        str(sample_data),
        f"out_dir={tmp_path}",
        "trainer.max_epochs=1",
        "data.num_workers=0",
        "data.batch_size=32",
        "width=16",
    ]
    assert main(args) == 0
    sets = [sample_set(gan_run, 40, tmp_path / "p", seed=1), sample_set(tmp_path / "dcgan_NORMAL", 40, tmp_path / "n")]
    cfg = DataConfig(data_dir=sample_data, image_size=32, num_workers=0, synthetic=sets, real_train=False)
    dm = ChestXrayDataModule(cfg)
    dm.setup()
    assert len(dm.datasets["train"]) == 80 and sorted(set(dm.train_targets)) == [0, 1]
    real_mean, _ = train_statistics(dm.datasets["val"].images, Manifest.load(sample_data).indices("train"))
    assert dm.mean != pytest.approx(real_mean)  # statistics of the synthetic training images
    synthetic_list = "[" + ",".join(map(str, sets)) + "]"
    out = tmp_path / "tstr"
    assert main(tiny_train_args(sample_data, out, f"data.synthetic={synthetic_list}", "data.real_train=false")) == 0
    m = evaluate(out / "cnn_base", sample_data, split="test", n_boot=100)
    # TSTR: trained on synthetic images only, scored on every real test image (none of them synthetic)
    test = Manifest.load(sample_data).indices("test")
    assert m["split"] == "test" and m["at_threshold"]["n_images"] == len(test)
    assert np.isfinite(m["at_threshold"]["auroc"]["value"])
