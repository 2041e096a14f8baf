import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
import yaml
from conftest import tiny_train_args

from pneumolab.cli import main
from pneumolab.config import TrainConfig, load_config
from pneumolab.data.datamodule import ChestXrayDataModule
from pneumolab.data.manifest import Manifest
from pneumolab.models.checkpoint import load_model_file
from pneumolab.rundir import read_history
from pneumolab.training.classifier import ClassifierModule
from pneumolab.training.trainer import train


def test_train_cli_writes_a_complete_self_describing_run(sample_data, tmp_path, capsys) -> None:
    assert main(tiny_train_args(sample_data, tmp_path)) == 0
    out = capsys.readouterr().out
    assert "done: cnn_base @ 32px, best epoch" in out and "val AUROC" in out and "img/s" in out
    run = tmp_path / "cnn_base"
    assert {p.name for p in (run / "checkpoints").iterdir()} == {"best.ckpt", "last.ckpt"}
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["model"]["name"] == "cnn_base" and cfg["data"]["image_size"] == 32

    history = read_history(run / "history.csv")
    assert [r["epoch"] for r in history] == [0, 1]
    assert all(r["train/loss"] > 0 for r in history)
    summary = json.loads((run / "summary.json").read_text())
    best = max(history, key=lambda r: r["val/auroc"])
    assert summary["best_epoch"] == best["epoch"]  # selected on validation AUROC
    assert summary["best_val"]["val/auroc"] == pytest.approx(best["val/auroc"], abs=1e-5)
    # The result line counts epochs from 1 and reports the operating point the model file stores.
    assert f"best epoch {int(best['epoch']) + 1} of 2:" in out
    assert f"at the stored threshold {summary['operating_point']['threshold']:.3f}" in out

    model, meta = load_model_file(run / "model.pt")  # weights_only load
    assert meta["model_name"] == "cnn_base" and meta["classes"] == ["NORMAL", "PNEUMONIA"]
    assert meta["preprocessing"]["image_size"] == 32 and meta["metrics"]["split"] == "val"
    assert meta["config"]["data"]["data_dir"] == str(sample_data)
    best, last = (torch.load(run / "checkpoints" / f"{n}.ckpt", weights_only=True) for n in ("best", "last"))
    assert "optimizer_states" in last and "optimizer_states" not in best  # resume state only where resume reads it
    ckpt = ClassifierModule.load_from_checkpoint(run / "checkpoints" / "best.ckpt", weights_only=True).eval()
    x = torch.randn(3, 1, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), ckpt(x))

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0, "histograms": 0}).Reload()
    tags = events.Tags()
    assert {"val/auroc", "val/loss", "train/loss_epoch"} <= set(tags["scalars"])
    assert "train/inputs" in tags["images"]
    assert any(t.startswith("weight/") for t in tags["histograms"])
    assert any(t.startswith("grad/") for t in tags["histograms"])


def test_select_last_keeps_the_final_epoch_not_the_best_on_validation(
    sample_data, tmp_path, capsys, caplog, monkeypatch
) -> None:
    # A learning rate too small to move a weight: every epoch scores the same on validation, so "best" keeps the
    # first of the tied epochs and "last" the third.
    frozen = ("trainer.max_epochs=3", "optim.lr=1e-12")
    lib = logging.getLogger("pneumolab")  # the CLI's console logger, which does not propagate: capture it there
    caplog.set_level(logging.INFO, logger="pneumolab")
    monkeypatch.setattr(lib, "propagate", False)
    monkeypatch.setattr(lib, "handlers", [caplog.handler])
    for select in ("best", "last"):
        assert main(tiny_train_args(sample_data, tmp_path, f"name={select}", *frozen, f"trainer.select={select}")) == 0
    assert json.loads((tmp_path / "best" / "summary.json").read_text())["best_epoch"] == 0
    run = tmp_path / "last"
    summary = json.loads((run / "summary.json").read_text())
    history = read_history(run / "history.csv")
    assert len({r["val/auroc"] for r in history}) == 1  # the tie
    assert summary["best_epoch"] == 2 and summary["select"] == "last"
    assert summary["best_val"]["val/auroc"] == pytest.approx(history[-1]["val/auroc"], abs=1e-5)
    out, err = capsys.readouterr()
    assert "last epoch 3 of 3:" in out
    # Output that is not a terminal (here pytest's capture) gets one line per epoch, not a progress bar's redraws.
    epochs = [r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch ")]
    assert [e.split(":")[0] for e in epochs] == ["epoch 1/3", "epoch 2/3", "epoch 3/3"] * 2  # runs best, last
    assert all("train/loss" in e and "val/auroc" in e for e in epochs)
    assert re.search(r"\(\d+ s; ~\d+ s left\)$", epochs[0]) and epochs[2].endswith(" s)")  # no time left to say
    assert "it/s" not in err
    model, meta = load_model_file(run / "model.pt")
    assert meta["best_epoch"] == 2
    last = ClassifierModule.load_from_checkpoint(run / "checkpoints" / "last.ckpt", weights_only=True).eval()
    x = torch.randn(3, 1, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), last(x))  # model.pt holds the final weights
    assert "last epoch (3) kept: the end of the schedule" in (run / "MODEL_CARD.md").read_text()


def _cfg(data: Path, out: Path, name: str, *extra: str) -> TrainConfig:
    args = tiny_train_args(data, out, f"name={name}", *extra)
    return load_config(TrainConfig, "cpu/cnn_base", [a for a in args[5:]], data={"data_dir": str(data)})


def test_same_seed_same_data_same_metrics(sample_data, tmp_path) -> None:
    a = train(_cfg(sample_data, tmp_path, "a"), progress_bar=False)
    b = train(_cfg(sample_data, tmp_path, "b"), progress_bar=False)
    assert read_history(a.run_dir / "history.csv") == read_history(b.run_dir / "history.csv")  # bit-identical
    sa, sb = torch.load(a.run_dir / "model.pt")["state_dict"], torch.load(b.run_dir / "model.pt")["state_dict"]
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_training_never_reads_the_test_split(sample_data, tmp_path, monkeypatch) -> None:
    """Every image training touches (the epochs, the operating point, the guard) comes through CachedImages:
    record which manifest rows it hands out, and check none is a test row."""
    from pneumolab.data.dataset import CachedImages
    from pneumolab.data.manifest import Manifest

    seen: set[int] = set()
    original = CachedImages.__getitem__

    def spy(self, i):
        seen.add(self.indices[i])
        return original(self, i)

    monkeypatch.setattr(CachedImages, "__getitem__", spy)
    assert train(_cfg(sample_data, tmp_path, "t"), progress_bar=False).summary["best_epoch"] is not None
    m = Manifest.load(sample_data)
    assert set(m.indices("train")) | set(m.indices("val")) == seen  # the spy saw the whole of train and val
    assert not seen & set(m.indices("test"))


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["optim.lrr=0.1"], "unknown key 'optim.lrr' (did you mean 'lr'?)"),
        (["model.name=resnet99"], "unknown model 'resnet99'"),
        (["trainer.max_epochs=0"], "trainer.max_epochs"),
    ],
)
def test_bad_config_exits_2_naming_the_key(sample_data, tmp_path, capsys, extra, message) -> None:
    assert main(tiny_train_args(sample_data, tmp_path, *extra)) == 2
    printed = capsys.readouterr()
    assert message in printed.err and "data:" not in printed.out + printed.err  # refused before the data is read


def test_resume_refuses_bad_requests(tmp_path, sample_data, capsys) -> None:
    assert main(["train", "--resume", str(tmp_path)]) == 2
    assert "not a training run" in capsys.readouterr().err
    run = tmp_path / "r"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump(_cfg(sample_data, tmp_path, "r").model_dump(mode="json")))
    assert main(["train", "--resume", str(run)]) == 2
    assert "nothing to resume" in capsys.readouterr().err
    assert main(["train", "--resume", str(run), "optim.lr=1"]) == 2
    assert "only trainer.* overrides" in capsys.readouterr().err


def test_resume_after_sigkill_loses_at_most_one_epoch(sample_data, tmp_path) -> None:
    args = tiny_train_args(sample_data, tmp_path, "trainer.max_epochs=200", "trainer.early_stopping_patience=null")
    proc = subprocess.Popen(
        [sys.executable, "-m", "pneumolab", *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    run = tmp_path / "cnn_base"
    deadline = time.time() + 120
    # Lightning saves checkpoints after the other epoch-end hooks: 3 history rows mean epoch 1 is checkpointed.
    while len(read_history(run / "history.csv")) < 3 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["epoch"]  # index of the last saved epoch
    assert last >= 1 and last >= len(read_history(run / "history.csv")) - 2  # at most the running epoch is lost
    assert main(["train", "--resume", str(run), f"trainer.max_epochs={last + 3}"]) == 0
    epochs = [int(r["epoch"]) for r in read_history(run / "history.csv")]
    assert epochs == list(range(last + 3))  # every epoch once, none lost, none repeated
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == last + 2
    assert len(list(tmp_path.iterdir())) == 1  # no second run folder


DDP_SCRIPT = r"""
import json, sys
from pathlib import Path
import lightning as L
from pneumolab.config import TrainConfig, load_config
from pneumolab.training import trainer as T

out = Path(sys.argv[2])

class ShardSpy(L.Callback):
    def on_train_epoch_start(self, trainer, pl_module):
        idx = list(iter(trainer.train_dataloader.sampler))
        (out / f"rank{trainer.global_rank}.json").write_text(json.dumps({"train": idx}))
    def on_validation_epoch_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            (out / f"val{trainer.global_rank}_{trainer.current_epoch}.json").write_text(
                json.dumps({"auroc": float(pl_module.val_auroc.compute())}))

build = T.build_trainer
def spied(cfg, run_dir, **kwargs):
    trainer, throughput = build(cfg, run_dir, **kwargs)
    trainer.callbacks.append(ShardSpy())
    return trainer, throughput
T.build_trainer = spied
cfg = load_config(TrainConfig, "cpu/cnn_base", [
    f"out_dir={out / 'runs'}", "data.image_size=32", "data.num_workers=0", "trainer.max_epochs=1",
    "trainer.precision=32", "trainer.channels_last=false", "trainer.devices=2", "trainer.accelerator=cpu",
    "data.balance=none"], data={"data_dir": sys.argv[1]})
T.train(cfg, progress_bar=False)
"""


def test_ddp_two_cpu_processes_shard_reduce_and_checkpoint_once(sample_data, tmp_path) -> None:
    script = tmp_path / "ddp_train.py"
    script.write_text(DDP_SCRIPT)
    res = subprocess.run(
        [sys.executable, str(script), str(sample_data), str(tmp_path)], capture_output=True, text=True, timeout=300
    )
    assert res.returncode == 0, res.stderr[-3000:]
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text())["train"] for r in (0, 1))
    assert r0 and r1 and not set(r0) & set(r1)  # disjoint shards...
    a0, a1 = (json.loads((tmp_path / f"val{r}_0.json").read_text())["auroc"] for r in (0, 1))
    assert a0 == pytest.approx(a1)  # ...and the validation metric is reduced over both ranks' shards
    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == 1 and {p.name for p in (runs[0] / "checkpoints").iterdir()} == {"best.ckpt", "last.ckpt"}

    # The reduced AUROC equals the AUROC of the saved model over the whole validation split.
    from torchmetrics.functional.classification import binary_auroc

    model, _ = load_model_file(runs[0] / "model.pt")
    dm = ChestXrayDataModule(_cfg(sample_data, tmp_path, "x").data)
    dm.setup()
    xs, ys = zip(*dm.val_dataloader(), strict=True)
    with torch.no_grad():
        prob = model(torch.cat(xs)).softmax(1)[:, 1]
    assert float(binary_auroc(prob, torch.cat(ys))) == pytest.approx(a0, abs=1e-5)
    assert len(r0) + len(r1) == len(dm.datasets["train"])  # together the shards cover the training split


def test_determinism_is_strict_on_cpu_and_warns_on_gpu(monkeypatch) -> None:
    from pneumolab.training.trainer import deterministic_mode

    # A GPU has kernels without a deterministic version (AlexNet's and VGG19's adaptive pooling backward):
    # strict mode would make those models fail there, so it warns instead; CPU runs stay strict.
    assert deterministic_mode(True, "cpu") is True and deterministic_mode(False, "gpu") is False
    assert deterministic_mode(True, "gpu") == "warn" and deterministic_mode(True, "cuda") == "warn"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert deterministic_mode(True, "auto") == "warn"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert deterministic_mode(True, "auto") is True


def test_ema_weights_are_validated_checkpointed_and_exported(sample_data, tmp_path) -> None:
    import lightning as L

    class Snapshots(L.Callback):  # the raw weights after each optimiser step
        def __init__(self) -> None:
            self.states: list[dict[str, torch.Tensor]] = []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            self.states.append({k: v.detach().clone() for k, v in pl_module.net.state_dict().items()})

    cfg = _cfg(
        sample_data, tmp_path, "ema", "trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.ema_decay=0.75"
    )
    snaps = Snapshots()
    run = train(cfg, progress_bar=False, extra_callbacks=[snaps]).run_dir
    w1, w2 = snaps.states
    exported = torch.load(run / "model.pt")["state_dict"]
    best, last = (torch.load(run / "checkpoints" / f"{n}.ckpt", weights_only=True) for n in ("best", "last"))
    for k, v in exported.items():
        if v.is_floating_point():  # the first update copies, the second blends: 0.75 * w1 + 0.25 * w2
            assert torch.allclose(v, 0.75 * w1[k] + 0.25 * w2[k], atol=1e-6), k
            assert torch.equal(best["state_dict"][f"net.{k}"], v)  # validated and checkpointed: the average
            assert torch.equal(last["current_model_state"][f"net.{k}"], w2[k])  # raw weights kept for --resume
    assert any(not torch.allclose(w1[k], w2[k]) for k in w1)  # the two steps did change the weights


def test_a_training_console_shows_only_what_a_user_can_act_on(sample_data, tmp_path) -> None:
    """No GPU/TPU lines, product tips, AMP notices, model table or framework deprecation warnings; --verbose
    brings Lightning's lines back."""
    from conftest import tiny_train_args

    def console(*pre: str) -> str:
        args = [*pre, *tiny_train_args(sample_data, tmp_path / str(len(pre)), "trainer.max_epochs=1")]
        env = {**os.environ, "PYTHONWARNINGS": "default"}  # what a user's shell shows (pytest filters warnings)
        done = subprocess.run([sys.executable, "-m", "pneumolab", *args], capture_output=True, text=True, env=env)
        assert done.returncode == 0, done.stderr
        return done.stdout + done.stderr

    quiet = console()
    assert "done: cnn_base" in quiet
    assert "\nepoch 1/1: train/loss" in quiet  # our lines as sentences, no "INFO pneumolab.training.callbacks:"
    noises = ("GPU available", "TPU available", "Tip:", "Total params", "Warning", "deprecated", "Loading `", "INFO")
    for noise in noises:
        assert noise not in quiet, noise
    loud = console("--verbose")
    assert "GPU available" in loud and "INFO pneumolab.training.callbacks: epoch 1/1" in loud


def test_bf16_falls_back_to_fp32_only_on_a_cpu_without_native_bfloat16(monkeypatch) -> None:
    from pneumolab.training import trainer

    monkeypatch.setattr(trainer.torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(trainer, "_cpu_has_native_bf16", lambda: False)  # e.g. an AVX2-only CPU: ~10x slower
    assert trainer.effective_precision("bf16-mixed", "cpu") == "32"
    assert trainer.effective_precision("16-mixed", "cpu") == "16-mixed"
    monkeypatch.setattr(trainer, "_cpu_has_native_bf16", lambda: True)
    assert trainer.effective_precision("bf16-mixed", "auto") == "bf16-mixed"
    monkeypatch.setattr(trainer.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(trainer, "_cpu_has_native_bf16", lambda: False)
    assert trainer.effective_precision("bf16-mixed", "gpu") == "bf16-mixed"  # GPUs have it


def test_mixup_blends_images_and_losses_with_one_lambda_per_batch() -> None:
    import torch.nn.functional as F

    from pneumolab.training.classifier import ClassifierModule

    module = ClassifierModule(
        "cnn_base", {}, {"mixup_alpha": 0.4}, [1.0, 3.0], {"input_shape": [1, 16, 16]}, ["NORMAL", "PNEUMONIA"], {}
    )
    x, y = torch.rand(6, 1, 16, 16), torch.tensor([0, 1, 1, 0, 1, 1])
    torch.manual_seed(5)
    loss, prob, y_scored = module._mixup_step((x, y), 0.4)
    torch.manual_seed(5)  # the same draws by hand: lambda, then the permutation
    lam = float(torch.distributions.Beta(0.4, 0.4).sample())
    perm = torch.randperm(6)
    logits = module(lam * x + (1 - lam) * x[perm])
    w = torch.tensor([1.0, 3.0])
    want = lam * F.cross_entropy(logits, y, weight=w) + (1 - lam) * F.cross_entropy(logits, y[perm], weight=w)
    torch.testing.assert_close(loss, want)
    torch.testing.assert_close(prob, logits.softmax(1)[:, 1])
    assert torch.equal(y_scored, y if lam >= 0.5 else y[perm])
    assert 0 < lam < 1 and not torch.equal(perm, torch.arange(6))  # seed 5 mixes for real


def test_train_warns_when_validation_is_too_thin_for_its_threshold_policy(sample_data, tmp_path, capsys) -> None:
    """The bundled sample's validation split holds far fewer than the 20 pneumonia images that
    sensitivity>=0.95 needs: the threshold is stored, with the counts, and the console says it is rough."""
    args = tiny_train_args(sample_data, tmp_path, "trainer.max_epochs=1", "threshold_policy=sensitivity>=0.95")
    assert main(args) == 0
    summary = json.loads((tmp_path / "cnn_base" / "summary.json").read_text())
    m = Manifest.load(sample_data)
    val = Counter(m.records[i].label for i in m.indices("val"))
    assert summary["operating_point"]["operating_point"]["images"] == dict(val)
    assert val["NORMAL"] >= 10 and val["PNEUMONIA"] < 20  # the sample's split: only pneumonia is short
    err = capsys.readouterr().err
    assert f"warning: validation holds {val['PNEUMONIA']} PNEUMONIA images; policy sensitivity>=0.95 needs " in err
