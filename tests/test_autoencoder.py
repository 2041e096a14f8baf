from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_train_args
from PIL import Image, ImageDraw

from pneumolab.cli import main
from pneumolab.data.cache import resize_square
from pneumolab.data.latent import latent_path
from pneumolab.data.manifest import Manifest
from pneumolab.data.transforms import EvalPreset
from pneumolab.errors import InputError
from pneumolab.generative.autoencoder import ConvAutoencoder, load_autoencoder, ood_flags
from pneumolab.models.checkpoint import load_model_file


def test_study_encoder_shape_and_parameters() -> None:
    ae = ConvAutoencoder()
    assert ae.encoder(torch.zeros(2, 1, 224, 224)).shape == (2, 256, 14, 14)
    assert ae(torch.zeros(2, 1, 224, 224)).shape == (2, 1, 224, 224)
    # Conv(k3) weights + bias, BatchNorm weight + bias, for 1->32->64->128->256 as printed in the study.
    expected = sum(a * b * 9 + b + 2 * b for a, b in ((1, 32), (32, 64), (64, 128), (128, 256)))
    assert sum(p.numel() for p in ae.encoder.parameters()) == expected == 388_800
    assert ae.code_shape(224) == (256, 14, 14) and 256 * 14 * 14 == 224 * 224  # not a compression
    assert ConvAutoencoder((32, 64, 128, 256, 64)).code_shape(224) == (64, 7, 7)


def test_reconstruction_loss_falls_on_the_sample(sample_data) -> None:
    from pneumolab.config import DataConfig
    from pneumolab.data.datamodule import ChestXrayDataModule

    torch.manual_seed(0)
    dm = ChestXrayDataModule(DataConfig(data_dir=sample_data, image_size=32, batch_size=32, num_workers=0))
    dm.setup()
    x, _ = next(iter(dm.train_dataloader()))
    ae = ConvAutoencoder()
    opt = torch.optim.Adam(ae.parameters(), lr=1e-3)
    losses = []
    for _ in range(15):
        loss = torch.nn.functional.mse_loss(ae(x), x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


def test_autoencoder_run_stores_its_guard_and_previews(ae_run) -> None:
    _, meta = load_autoencoder(ae_run)
    assert meta["ood"]["split"] == "train" and meta["ood"]["threshold"] > meta["ood"]["error_quantiles"]["50"]
    assert meta["code_shape"] == [256, 4, 4] and "val/psnr" in meta["metrics"]
    assert (ae_run / "reconstructions.png").read_bytes()[:4] == b"\x89PNG"


def _prep(arr: np.ndarray, meta: dict) -> torch.Tensor:
    pre = meta["preprocessing"]
    tf = EvalPreset(mean=pre["mean"], std=pre["std"], normalization=pre["normalization"])
    return tf(torch.from_numpy(np.array(resize_square(np.array(arr), pre["image_size"])))[None])


def test_ood_guard_flags_non_xrays_and_passes_real_ones(ae_run, sample_data, capsys) -> None:
    ae, meta = load_autoencoder(ae_run)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:300, 0:300]
    photo = (127 + 60 * np.sin(xx / 23) + 50 * np.cos(yy / 31)).clip(0, 255).astype(np.uint8)  # smooth "photo"
    page = Image.new("L", (300, 300), 255)
    draw = ImageDraw.Draw(page)
    for i in range(12):
        draw.text((10, 10 + 22 * i), "The quick brown fox jumps over the lazy dog 0123", fill=0)
    odd = {
        "noise": rng.integers(0, 256, (300, 300), dtype=np.uint8),
        "blank": np.zeros((300, 300), np.uint8),
        "photo": photo,
        "text": np.asarray(page),
    }
    _, flags = ood_flags(ae, meta, torch.stack([_prep(a, meta) for a in odd.values()]))
    assert dict(zip(odd, flags.tolist(), strict=True)) == dict.fromkeys(odd, True)
    # Real X-rays the autoencoder never trained on: the sample's val and test splits (it trains on train).
    m = Manifest.load(sample_data)
    unseen = [r.path for r in m.records if r.split != "train"]
    real = [np.asarray(Image.open(Path(m.root) / p).convert("L")) for p in unseen]
    _, real_flags = ood_flags(ae, meta, torch.stack([_prep(a, meta) for a in real]))
    with capsys.disabled():
        print(f"\nOOD guard: {real_flags.sum()} of {len(real)} unseen real X-rays flagged ({real_flags.mean():.1%})")
    assert real_flags.mean() <= 0.03


def test_encode_then_latent_training_round_trip(ae_run, sample_data, tmp_path, capsys) -> None:
    assert main(["autoencoder", "encode", str(ae_run), "--data", str(sample_data)]) == 0
    assert "(287, 256, 4, 4) float16" in capsys.readouterr().out
    args = tiny_train_args(sample_data, tmp_path, "-c", "cpu/latent_cnn", "--latent", str(ae_run), "data.image_size=64")
    assert main(args) == 0
    model, meta = load_model_file(tmp_path / "latent_cnn" / "model.pt")
    assert meta["preprocessing"]["latent"]["shape"] == [256, 4, 4]
    assert model(torch.zeros(2, 1, 64, 64)).shape == (2, 2)  # takes pixels: the encoder sits in front
    # Self-contained: the file loads with the same weights where the autoencoder run does not exist.
    blob = torch.load(tmp_path / "latent_cnn" / "model.pt", weights_only=True)
    blob["preprocessing"]["latent"]["autoencoder"] = "/elsewhere/autoencoder.pt"
    torch.save(blob, tmp_path / "moved.pt")
    x = torch.rand(3, 1, 64, 64)
    assert torch.equal(load_model_file(tmp_path / "moved.pt")[0](x), model(x))
    # A head-only file (the old format) needs its autoencoder, unchanged: a changed one is refused.
    changed = tmp_path / "changed.pt"
    changed.write_bytes((ae_run / "autoencoder.pt").read_bytes() + b"\0")
    blob["state_dict"] = {k[len("head.") :]: v for k, v in blob["state_dict"].items() if k.startswith("head.")}
    blob["preprocessing"]["latent"]["autoencoder"] = str(changed)
    torch.save(blob, tmp_path / "head_only.pt")
    with pytest.raises(InputError, match="missing or changed"):
        load_model_file(tmp_path / "head_only.pt")
    assert main(["evaluate", str(tmp_path / "latent_cnn"), "--data", str(sample_data), "--n-boot", "100"]) == 0
    from pneumolab.evaluation.report import compare

    pixels = tmp_path / "pixels"
    assert main(tiny_train_args(sample_data, pixels)) == 0
    compare([tmp_path / "latent_cnn", pixels / "cnn_base"], sample_data, tmp_path / "report", n_boot=100)
    text = (tmp_path / "report" / "report.md").read_text()
    assert "Autoencoder codes vs pixels" in text and "256x4x4 code" in text and "32x32 pixels" in text


def test_latent_cache_follows_the_autoencoder(ae_run, sample_data, tmp_path) -> None:
    import shutil

    manifest = Manifest.load(sample_data)
    before = latent_path(manifest, ae_run / "autoencoder.pt", sample_data)
    copy = tmp_path / "ae2"
    shutil.copytree(ae_run, copy)
    ae, meta = load_autoencoder(copy)
    with torch.no_grad():
        ae.encoder[0][0].weight.add_(0.1)
    from pneumolab.generative.autoencoder import save_autoencoder

    save_autoencoder(
        copy / "autoencoder.pt", ae, {k: v for k, v in meta.items() if k not in ("format", "version", "channels")}
    )
    assert latent_path(manifest, copy / "autoencoder.pt", sample_data) != before
