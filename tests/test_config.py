import pytest

from pneumolab.config import PRESETS, DataConfig, load_config, parse_overrides, preset_names
from pneumolab.errors import InputError


def test_overrides_parse_literals_and_nesting() -> None:
    assert parse_overrides(["a.b=3", "c=[1, 2]", "d=text", "e=True"]) == {
        "a": {"b": 3},
        "c": [1, 2],
        "d": "text",
        "e": True,
    }
    assert parse_overrides(["a=null", "b=none", "c=None", "d=false"]) == {"a": None, "b": "none", "c": None, "d": False}
    with pytest.raises(InputError, match="key=value"):
        parse_overrides(["novalue"])


def test_yaml_then_overrides(tmp_path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("image_size: 64\naugment:\n  rotation_deg: 3\n")
    c = load_config(DataConfig, cfg, ["augment.contrast=0.2", "batch_size=16"], data_dir="d")
    assert (c.image_size, c.batch_size, c.augment.rotation_deg, c.augment.contrast) == (64, 16, 3.0, 0.2)
    assert c.augment.hflip is False


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["image_sise=64"], "unknown key 'image_sise' \\(did you mean 'image_size'\\?\\)"),
        (["augment.rotaton_deg=3"], "unknown key 'augment.rotaton_deg' \\(did you mean 'rotation_deg'\\?\\)"),
        (["balance=oversample"], "balance"),
        (["image_size=8"], "image_size"),
    ],
)
def test_bad_keys_and_values_are_named(overrides, message) -> None:
    with pytest.raises(InputError, match=message):
        load_config(DataConfig, None, overrides, data_dir="d")


def test_presets_resolve_and_improved_variants_inherit_their_base() -> None:
    from pneumolab.config import TrainConfig

    cfg = load_config(TrainConfig, "cpu/resnet34_improved", ["data.data_dir=d"])
    assert (cfg.name, cfg.model.name, cfg.model.dropout, cfg.optim.weight_decay) == (
        "resnet34_improved",
        "resnet34",
        0.5,
        5e-4,
    )
    assert cfg.data.image_size == 128 and cfg.trainer.early_stopping_patience == 3
    seed = load_config(TrainConfig, "seed/resnet34", ["data.data_dir=d"])
    assert seed.data.image_size == 224 and seed.optim.optimizer == "adam"
    with pytest.raises(InputError, match=r"not found.*cpu/resnet18"):
        load_config(TrainConfig, "cpu/resnet99", ["data.data_dir=d"])


CLASSIFIER_PRESETS = [n for n in preset_names() if n.startswith(("cpu/", "seed/"))]


def test_presets_are_derived_for_every_registered_model() -> None:
    from pneumolab.config import TrainConfig
    from pneumolab.models import get_spec, list_models

    for model in list_models():
        for family in ("cpu", "seed"):
            assert f"{family}/{model}" in CLASSIFIER_PRESETS
            improved = f"{family}/{model}_improved"
            # the "improved" recipe is derived for torchvision architectures; the study's networks have their own
            assert (improved in CLASSIFIER_PRESETS) == get_spec(model).pretrainable
    # only how a model differs from its family's recipe is written down: one file per exception
    files = sorted(p.stem for p in (PRESETS / "cpu").glob("*.yaml") if not p.stem.startswith("_"))
    assert files == ["alexnet_base", "efficientnet_b0", "latent_cnn", "mobilenet_v3_small", "vgg19"]
    vgg = load_config(TrainConfig, "cpu/vgg19_improved", ["data.data_dir=d"])
    assert (vgg.name, vgg.optim.lr, vgg.model.dropout, vgg.optim.label_smoothing) == ("vgg19_improved", 3e-4, 0.5, 0.05)
    seed = load_config(TrainConfig, "seed/densenet121_improved", ["data.data_dir=d"])
    assert (seed.name, seed.optim.schedule, seed.trainer.max_epochs) == ("densenet121_improved-seed", "plateau", 20)
    with pytest.raises(InputError, match="not found"):
        load_config(TrainConfig, "cpu/_defaults", ["data.data_dir=d"])


@pytest.mark.parametrize("preset", CLASSIFIER_PRESETS)
def test_every_preset_is_valid_and_names_a_registered_model(preset: str) -> None:
    from pneumolab.config import TrainConfig
    from pneumolab.models import list_models

    cfg = load_config(TrainConfig, preset, ["data.data_dir=d"])
    assert cfg.model.name in list_models()
    assert cfg.data.image_size == (128 if preset.startswith("cpu/") else 224)


@pytest.mark.parametrize(
    "preset", ["autoencoder/cpu", "autoencoder/cpu_c16", "autoencoder/cpu_c64d5", "autoencoder/seed"]
)
def test_autoencoder_presets_are_valid(preset: str) -> None:
    from pneumolab.config import AutoencoderConfig

    cfg = load_config(AutoencoderConfig, preset, ["data.data_dir=d"])
    assert cfg.trainer.monitor == "val/loss" and cfg.data.augment.enabled is False


def test_the_pretrain_preset_makes_encoders_the_fast_recipe_accepts() -> None:
    from pneumolab.config import PretrainConfig, TrainConfig

    pre = load_config(PretrainConfig, "pretrain/simclr", ["data.data_dir=d"])
    fast = load_config(TrainConfig, "fast", ["data.data_dir=d"])
    # What load_init_file compares: architecture, input size and normalisation.
    assert (pre.model.name, pre.model.kwargs) == (fast.model.name, fast.model.kwargs)
    assert (pre.data.image_size, pre.data.normalization) == (fast.data.image_size, fast.data.normalization)
    assert pre.data.augment.batched and pre.trainer.monitor is None
    # fast_pretrained is fast fine-tuned, gentler, from where that preset writes its encoder
    tuned = load_config(TrainConfig, "fast_pretrained", ["data.data_dir=d"])
    assert tuned.model.init == pre.out_dir / pre.name / "encoder.pt"
    assert tuned.optim.lr < fast.optim.lr and fast.data.augment.views == 2
    assert (fast.optim.optimizer, tuned.optim.optimizer) == ("muon", "adamw")  # as measured, as fast_long below
    as_measured = {"views": 1, "supersample": 1.0}  # the sixth round's augmentation: one view, at 64 px
    assert tuned.data == fast.data.model_copy(update={"augment": fast.data.augment.model_copy(update=as_measured)})
    assert tuned.trainer.select == "best" and fast.trainer.select == "last"
    assert tuned.trainer.model_copy(update={"max_epochs": fast.trainer.max_epochs, "select": "last"}) == fast.trainer
    # fast_long is fast, longer, with the optimiser it was measured with (AdamW: fast's before the 26th round)
    long = load_config(TrainConfig, "fast_long", ["data.data_dir=d"])
    assert long.trainer.model_copy(update={"max_epochs": 8, "select": "last"}) == fast.trainer
    assert long.optim == fast.optim.model_copy(update={"optimizer": "adamw", "lr": 1.5e-3})
    same = {"name": "fast", "trainer": fast.trainer, "optim": fast.optim}
    assert long.trainer.max_epochs == 38 and long.model_copy(update=same) == fast
