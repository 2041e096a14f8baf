import pytest

from pneumolab.config import DataConfig, load_config, parse_overrides
from pneumolab.errors import InputError


def test_overrides_parse_literals_and_nesting() -> None:
    assert parse_overrides(["a.b=3", "c=[1, 2]", "d=text", "e=True"]) == {
        "a": {"b": 3},
        "c": [1, 2],
        "d": "text",
        "e": True,
    }
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
