import numpy as np
from conftest import write_image
from PIL import Image

from pneumolab.data.cache import build_cache, cache_path, load_cache, prepared_sizes
from pneumolab.data.index import index_source
from pneumolab.data.manifest import Manifest
from pneumolab.data.splits import split_manifest


def test_cache_holds_resized_images_in_manifest_order(prepared_dir) -> None:
    m = Manifest.load(prepared_dir)
    arr = load_cache(m, 32, prepared_dir / "cache")
    assert arr.shape == (len(m), 32, 32) and arr.dtype == np.uint8
    for i in (0, len(m) // 2, len(m) - 1):
        src = Image.open(m.root / m.records[i].path).convert("L").resize((32, 32), Image.BILINEAR)
        assert np.array_equal(arr[i], np.asarray(src))


def test_cache_is_reused_and_survives_a_new_split(prepared_dir) -> None:
    m = Manifest.load(prepared_dir)
    path = build_cache(m, 32, prepared_dir / "cache")
    mtime = path.stat().st_mtime_ns
    assert build_cache(m, 32, prepared_dir / "cache") == path and path.stat().st_mtime_ns == mtime
    resplit = split_manifest(m, seed=5)
    assert cache_path(resplit, 32, prepared_dir / "cache") == path  # same pixels, same cache


def test_cache_is_rebuilt_when_the_manifest_changes(kaggle_dir, tmp_path) -> None:
    out = tmp_path / "ds"
    m1 = index_source(kaggle_dir, out, workers=1).manifest
    p1 = build_cache(m1, 32, out / "cache")
    write_image(kaggle_dir / "train" / "NORMAL" / "IM-0800-0001.jpeg", seed=4321)
    m2 = index_source(kaggle_dir, out, workers=1).manifest
    p2 = build_cache(m2, 32, out / "cache", workers=2)
    assert p1 != p2 and not p1.exists() and p2.exists()  # stale cache of the same size removed
    assert np.load(p2).shape[0] == len(m2) == len(m1) + 1
    assert build_cache(m2, 48, out / "cache").exists() and p2.exists()  # other sizes are independent
    assert not list((out / "cache").glob(".*tmp"))


def test_parallel_and_serial_builds_agree(prepared_dir, tmp_path) -> None:
    m = Manifest.load(prepared_dir)
    a = np.load(build_cache(m, 24, tmp_path / "c1", workers=1))
    b = np.load(build_cache(m, 24, tmp_path / "c2", workers=2))
    assert np.array_equal(a, b)


def test_prepared_sizes_are_recorded_and_a_missing_size_is_announced(prepared_dir, caplog, capsys, monkeypatch) -> None:
    import json
    import logging

    from pneumolab.cli import main

    m = Manifest.load(prepared_dir)
    assert main(["data", "cache", str(prepared_dir), "--size", "32"]) == 0
    capsys.readouterr()
    assert main(["data", "summary", str(prepared_dir), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["cached_sizes_px"] == [32]
    monkeypatch.setattr(logging.getLogger("pneumolab"), "propagate", True)  # main()'s console handler stops it
    with caplog.at_level(logging.INFO, logger="pneumolab"):
        load_cache(m, 24, prepared_dir / "cache")  # a stage wants a size nobody prepared
    message = next(r.getMessage() for r in caplog.records if "no 24 px cache" in r.getMessage())
    assert "prepared: 32 px" in message and f"pneumolab data cache {prepared_dir} --size 24" in message
    assert prepared_sizes(m, prepared_dir / "cache") == [24, 32]


def test_a_commands_working_copy_is_decoded_under_the_users_source_name(
    kaggle_dir, tmp_path, caplog, monkeypatch
) -> None:
    """`evaluate`/`calibrate` index a raw folder into their own (often temporary) folder: the console names the
    user's source, never that folder as one to prepare ahead of time."""
    import logging

    from pneumolab.data.index import as_dataset

    monkeypatch.setattr(logging.getLogger("pneumolab"), "propagate", True)  # the CLI's own handler stops it

    m, data_dir = as_dataset(kaggle_dir, tmp_path / "scratch")
    with caplog.at_level(logging.INFO, logger="pneumolab"):
        load_cache(m, 24, data_dir / "cache")
    lines = [r.getMessage() for r in caplog.records]
    assert set(lines) == {f"decoding the {len(m)} images of {kaggle_dir.resolve()} once at 24 px"}  # no hint
    listed = tmp_path / "site.csv"  # a CSV is named itself, not the folder its paths are relative to
    listed.write_text("path,label\n" + "".join(f"{kaggle_dir / r.path},{r.label}\n" for r in m.records))
    m, data_dir = as_dataset(listed, tmp_path / "scratch-csv")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="pneumolab"):
        load_cache(m, 24, data_dir / "cache")
    assert {r.getMessage() for r in caplog.records} == {f"decoding the {len(m)} images of {listed} once at 24 px"}


def test_cached_images_are_what_predict_and_the_service_feed_the_model(sample_data) -> None:
    """The validation images a threshold is fitted on and the external images `evaluate` scores come from the cache;
    `predict` and the service decode each upload in full and resize it with the model's preprocessing. The two must
    give the same pixels, or the measured operating point is not the served one (real Kermany JPEGs)."""
    from pneumolab.data.readers import decode_bytes
    from pneumolab.data.transforms import Preprocessing

    m = Manifest.load(sample_data)
    arr = load_cache(m, 32, sample_data / "cache")
    pre = Preprocessing(image_size=32, mean=0.5, std=0.25)
    for i in range(0, len(m), 7):
        path = m.root / m.records[i].path
        assert path.suffix == ".jpeg"
        assert np.array_equal(arr[i], pre.resize(decode_bytes(path.read_bytes(), path.name).pixels)), path.name
