"""Self-supervised pre-training: the loss against a hand computation, the encoder file, and model.init (from an
encoder, or a trained model to fine-tune)."""

import contextlib
import io
import math

import pytest
import torch
from conftest import tiny_train_args

from pneumolab.cli import main
from pneumolab.data.transforms import Preprocessing
from pneumolab.errors import InputError
from pneumolab.evaluation.model_card import trained_on
from pneumolab.inference.predictor import Predictor
from pneumolab.io import file_sha256
from pneumolab.models import create_model
from pneumolab.models.checkpoint import load_init_file
from pneumolab.training.pretrain import nt_xent

TINY = [
    "data.image_size=32",
    "data.batch_size=16",
    "model.kwargs.width=8",
    "trainer.max_epochs=2",
    "trainer.precision=32",
    "trainer.channels_last=false",
    "trainer.log_every_n_steps=1",
]
# The fine-tuning recipe the tiny encoder fits: the same network, input size and normalisation.
FIT = ["-c", "cpu/cnn_improved", "model.kwargs.width=8", "data.normalization=per_image"]


def test_nt_xent_matches_a_hand_computation() -> None:
    # Two images, two views each: rows 0, 1 are view 1 of images a, b; rows 2, 3 view 2 of a, b.
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [0.0, -1.0]])
    t = 0.5
    cos = [[sum(x * y for x, y in zip(u, v, strict=True)) for v in z.tolist()] for u in z.tolist()]  # unit rows
    positive = {0: 2, 1: 3, 2: 0, 3: 1}
    per_row = []
    for i in range(4):
        others = [math.exp(cos[i][j] / t) for j in range(4) if j != i]
        per_row.append(-math.log(math.exp(cos[i][positive[i]] / t) / sum(others)))
    assert nt_xent(z, t).item() == pytest.approx(sum(per_row) / 4, rel=1e-6)
    # Scale does not matter (cosine similarity); swapping the two views does not either.
    assert nt_xent(3 * z, t).item() == pytest.approx(sum(per_row) / 4, rel=1e-6)
    assert nt_xent(z[[2, 3, 0, 1]], t).item() == pytest.approx(sum(per_row) / 4, rel=1e-6)


@pytest.fixture(scope="module")
def encoder(sample_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("pretrain")
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        assert main(["pretrain", "--data", str(sample_data), f"out_dir={out}", *TINY]) == 0
    # the last line names the next step, with this run's encoder
    assert f"next: pneumolab train -c fast_pretrained --data {sample_data} model.init={out}" in printed.getvalue()
    return out / "simclr" / "encoder.pt"


def test_pretrain_writes_an_encoder_without_head_that_model_init_loads(encoder, sample_data, tmp_path) -> None:
    blob = torch.load(encoder, weights_only=True)
    assert blob["model_name"] == "cnn_improved" and blob["epochs"] == 2
    assert blob["trained_on"]["labels"] == "not used"
    assert not any(k.startswith("head.") for k in blob["state_dict"])
    assert math.isfinite(blob["train_loss"]) and blob["train_loss"] > 0
    # A fresh classifier takes every weight but the head's.
    net = create_model("cnn_improved", width=8)
    head_before = net.head[1].weight.clone()
    pre = Preprocessing.from_dict(blob["preprocessing"])
    load_init_file(net, encoder, "cnn_improved", {"width": 8, "dropout": None}, pre)
    for k, v in blob["state_dict"].items():
        assert torch.equal(net.state_dict()[k], v), k
    assert torch.equal(net.head[1].weight, head_before)
    # Through `train`: a learning rate of ~0 leaves the network where model.init put it.
    out = tmp_path / "ft"
    args = tiny_train_args(sample_data, out, *FIT, f"model.init={encoder}", "optim.lr=1e-12", "trainer.max_epochs=1")
    assert main(args) == 0
    trained = torch.load(out / "cnn_improved" / "model.pt", weights_only=True)["state_dict"]
    conv = "features.0.0.weight"
    assert torch.allclose(trained[conv], blob["state_dict"][conv], atol=1e-6)


def test_model_init_refuses_what_it_was_not_pretrained_for(encoder, sample_data, tmp_path, capsys) -> None:
    pre = Preprocessing(image_size=32, mean=0.5, std=0.25, normalization="per_image")
    with pytest.raises(InputError, match=r"pre-trained for cnn_improved \{'in_chans': 1, 'width': 8\}"):
        load_init_file(create_model("cnn_improved"), encoder, "cnn_improved", {}, pre)
    other_size = Preprocessing(image_size=64, mean=0.5, std=0.25, normalization="per_image")
    with pytest.raises(InputError, match="on 32 px per_image-normalised images, not cnn_improved"):
        load_init_file(create_model("cnn_improved", width=8), encoder, "cnn_improved", {"width": 8}, other_size)
    with pytest.raises(InputError, match="no such encoder or model file"):
        load_init_file(create_model("cnn_improved"), tmp_path / "none.pt", "cnn_improved", {}, pre)
    torch.save({"state_dict": {}}, tmp_path / "model.pt")
    with pytest.raises(InputError, match="not an encoder file of `pneumolab pretrain` nor a pneumolab model file"):
        load_init_file(create_model("cnn_improved"), tmp_path / "model.pt", "cnn_improved", {}, pre)
    # From the CLI: the dataset-normalised recipe gets one sentence and exit code 2.
    args = tiny_train_args(sample_data, tmp_path / "ft", "-c", "cpu/cnn_improved", "model.kwargs.width=8")
    assert main([*args, f"model.init={encoder}"]) == 2
    assert "dataset-normalised" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.augment.batched=false", "views=2 augments whole batches: set data.augment.batched=true"),
        ("data.augment.views=1", "SimCLR pairs two views of each image: set data.augment.views=2 (got 1)"),
        ("data.augment.aspect_balance=true", "pretrain never reads the labels"),
    ],
)
def test_pretrain_refuses_what_its_two_views_cannot_be(sample_data, tmp_path, capsys, override, message) -> None:
    args = ["pretrain", "--data", str(sample_data), f"out_dir={tmp_path}", *TINY, override]
    assert main(args) == 2
    assert message in capsys.readouterr().err


def test_model_init_fine_tunes_a_trained_model_and_records_it(sample_data, tmp_path) -> None:
    first = tmp_path / "first"
    assert main(tiny_train_args(sample_data, first, *FIT, "trainer.max_epochs=1")) == 0
    run = first / "cnn_improved"
    source = torch.load(run / "model.pt", weights_only=True)
    pre = Preprocessing.from_dict(source["preprocessing"])
    net = create_model("cnn_improved", width=8)
    record = load_init_file(net, run, "cnn_improved", {"width": 8}, pre)  # a run folder: its model.pt
    assert record == {
        "kind": "model",
        "file": str(run / "model.pt"),
        "sha256": file_sha256(run / "model.pt"),
        "training_data": source["training_data"],
    }
    for k, v in source["state_dict"].items():  # every weight, the head's too
        assert torch.equal(net.state_dict()[k], v), k
    # Through `train` at a learning rate of ~0: the fine-tuned network is the source's; its file and card say so.
    out = tmp_path / "ft"
    args = tiny_train_args(sample_data, out, *FIT, f"model.init={run}", "optim.lr=1e-12", "trainer.max_epochs=1")
    assert main(args) == 0
    tuned = torch.load(out / "cnn_improved" / "model.pt", weights_only=True)
    for k in ("head.1.weight", "features.0.0.weight"):
        assert torch.allclose(tuned["state_dict"][k], source["state_dict"][k], atol=1e-6), k
    assert tuned["init"] == record
    card = (out / "cnn_improved" / "MODEL_CARD.md").read_text()
    line = f"- Initialised from `{run / 'model.pt'}` (SHA-256 `{record['sha256'][:16]}`), a classifier trained on"
    assert line in card and "every weight, fine-tuned on the data below" in card
    api = Predictor.load(out / "cnn_improved", guard=False).model_card()["initialised_from"]  # GET /api/v1/model
    assert api == {"kind": "model", "sha256": record["sha256"], "trained_on": trained_on(source["training_data"])}
    # Another architecture or other classes: refused, saying what differs.
    with pytest.raises(InputError, match=r"was trained for cnn_improved \{'in_chans': 1, 'width': 8\} on 32 px"):
        load_init_file(create_model("cnn_improved"), run, "cnn_improved", {}, pre)
    viral = Preprocessing(image_size=32, mean=0.5, std=0.25, normalization="per_image", classes=("NORMAL", "VIRAL"))
    with pytest.raises(InputError, match=r"its classes \['NORMAL', 'PNEUMONIA'\] are not \['NORMAL', 'VIRAL'\]"):
        load_init_file(create_model("cnn_improved", width=8), run, "cnn_improved", {"width": 8}, viral)
