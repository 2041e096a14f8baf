from collections import Counter
from dataclasses import replace

import pytest
from conftest import make_kaggle, make_npz

from pneumolab.data.index import index_source
from pneumolab.data.manifest import Manifest, check_no_leakage
from pneumolab.data.splits import split_manifest
from pneumolab.errors import InputError, LeakageError


@pytest.fixture
def big_manifest(tmp_path) -> Manifest:
    root = make_kaggle(tmp_path / "src", n_pneu=40, n_norm=30, per_patient=3)
    return index_source(root, tmp_path / "out", workers=1).manifest


def _patients(m: Manifest, split: str) -> set[str]:
    return {r.patient_id for r in m.records if r.split == split}


def test_split_is_patient_disjoint_stratified_and_leaves_test_alone(big_manifest: Manifest) -> None:
    out = split_manifest(big_manifest, val_fraction=0.2, seed=0)
    assert not _patients(out, "train") & _patients(out, "val")
    assert [r.path for r in out.records if r.split == "test"] == [
        r.path for r in big_manifest.records if r.split == "test"
    ]
    pool = [r for r in out.records if r.split in ("train", "val")]
    val = [r for r in pool if r.split == "val"]
    assert 0.12 <= len(val) / len(pool) <= 0.28  # whole patients move, so the share is approximate
    share = lambda rows: sum(r.label == "PNEUMONIA" for r in rows) / len(rows)  # noqa: E731
    assert abs(share(val) - share(pool)) < 0.1  # stratified: val keeps the class balance
    assert out.meta["split"] == {
        "val_fraction": 0.2,
        "seed": 0,
        "by_image": False,
        "source_val": "merge",
        "test_fraction": 0.0,
    }


def test_internal_test_split_is_patient_disjoint_from_train_and_val(big_manifest: Manifest) -> None:
    rows = [replace(r, split="train", source_split="train") for r in big_manifest.records]  # a source without test
    no_test = Manifest(big_manifest.root, rows, big_manifest.meta)
    out = split_manifest(no_test, val_fraction=0.15, test_fraction=0.2, seed=0)
    sizes = Counter(r.split for r in out.records)
    assert 0.12 <= sizes["test"] / len(out.records) <= 0.28 and 0.08 <= sizes["val"] / len(out.records) <= 0.22
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        assert not _patients(out, a) & _patients(out, b)
    assert {r.label for r in out.records if r.split == "test"} == {"NORMAL", "PNEUMONIA"}
    assert split_manifest(no_test, val_fraction=0.15, test_fraction=0.2, seed=0).records == out.records  # seeded
    with pytest.raises(InputError, match="has its own test split"):
        split_manifest(big_manifest, test_fraction=0.2)  # a source's own test split is never re-drawn


def test_split_is_seeded(big_manifest: Manifest) -> None:
    a = [r.split for r in split_manifest(big_manifest, seed=1).records]
    b = [r.split for r in split_manifest(big_manifest, seed=1).records]
    c = [r.split for r in split_manifest(big_manifest, seed=2).records]
    assert a == b and a != c


def test_resplitting_starts_from_the_source_split(big_manifest: Manifest) -> None:
    once = split_manifest(big_manifest, seed=3)
    twice = split_manifest(split_manifest(big_manifest, seed=9), seed=3)
    assert [r.split for r in once.records] == [r.split for r in twice.records]


def test_tiny_source_val_is_merged_and_resplit(big_manifest: Manifest) -> None:
    out = split_manifest(big_manifest, val_fraction=0.1, seed=0)
    assert out.meta["split"]["source_val"] == "merge"  # 2 of ~190 images: too small to keep
    assert Counter(r.split for r in out.records)["val"] > 2


def test_medmnist_needs_by_image_or_keep(tmp_path) -> None:
    m = index_source(make_npz(tmp_path / "pneumoniamnist.npz"), tmp_path / "out", workers=1).manifest
    kept = split_manifest(m)  # auto: val is 10 of 50 images -> keep the source's own val
    assert [r.split for r in kept.records] == [r.source_split for r in m.records]
    with pytest.raises(InputError, match=r"no patient ids.*--by-image"):
        split_manifest(m, source_val="merge")
    by_image = split_manifest(m, source_val="merge", by_image=True, val_fraction=0.2)
    assert Counter(r.split for r in by_image.records) == Counter({"train": 40, "val": 10, "test": 10})


def test_bad_fraction_and_too_few_patients(big_manifest: Manifest) -> None:
    with pytest.raises(InputError, match=r"between 0 and 0\.5"):
        split_manifest(big_manifest, val_fraction=0.7)
    with pytest.raises(InputError, match="too few"):
        split_manifest(big_manifest, val_fraction=0.001)


def test_check_no_leakage_catches_overlaps(big_manifest: Manifest) -> None:
    recs = split_manifest(big_manifest, seed=0).records
    i = next(i for i, r in enumerate(recs) if r.split == "val")
    j = next(j for j, r in enumerate(recs) if r.split == "train")
    moved = list(recs)
    moved[i] = replace(recs[i], patient_id=recs[j].patient_id)
    with pytest.raises(LeakageError, match="patient"):
        check_no_leakage(moved)
    synthetic = list(recs)
    synthetic[i] = replace(recs[i], source="synthetic")
    with pytest.raises(LeakageError, match="synthetic"):
        check_no_leakage(synthetic)


def test_saved_manifest_refuses_leaky_rows_on_load(big_manifest: Manifest, tmp_path) -> None:
    out = split_manifest(big_manifest, seed=0)
    out.save(tmp_path / "ds")
    text = (tmp_path / "ds" / "manifest.csv").read_text().splitlines()
    k = next(k for k, line in enumerate(text) if ",val,real," in line)
    text[k] = text[k].replace(",val,real,", ",val,synthetic,")
    (tmp_path / "ds" / "manifest.csv").write_text("\n".join(text) + "\n")
    with pytest.raises(LeakageError):
        Manifest.load(tmp_path / "ds")


def test_leaky_protocol_is_announced_once_on_load_under_its_final_name(
    big_manifest: Manifest, tmp_path, caplog, monkeypatch
) -> None:
    from pneumolab.data import manifest

    monkeypatch.setattr(manifest, "_WARNED_LEAKY", set())
    out = split_manifest(big_manifest, seed=0)
    leaky = Manifest(out.root, out.records, {**out.meta, "protocol": manifest.LEAKY_PROTOCOL})
    leaky.save(tmp_path / "data.partial")  # as a pipeline step writes it, then moves it into place
    (tmp_path / "data.partial").rename(tmp_path / "data")
    assert "LEAKY" not in caplog.text
    Manifest.load(tmp_path / "data")
    Manifest.load(tmp_path / "data")
    assert caplog.text.count("LEAKY") == 1 and str(tmp_path / "data") in caplog.text and ".partial" not in caplog.text
