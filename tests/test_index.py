import csv
import json
import shutil

import numpy as np
import pytest
from conftest import make_kaggle, make_npz, tree_digest, write_dicom, write_image
from PIL import Image

from pneumolab.data.index import index_source
from pneumolab.data.manifest import Manifest
from pneumolab.errors import InputError, LeakageError


def _add_bad_files(root) -> dict[str, str]:
    """Add one file per kind of problem; returns {relative path: expected problem kind}."""
    pn, no = root / "train" / "PNEUMONIA", root / "train" / "NORMAL"
    (pn / "person500_bacteria_1.jpeg").write_bytes(b"")
    good = write_image(pn / "person501_bacteria_1.jpeg", seed=999, size=(256, 256)).read_bytes()
    (pn / "person501_bacteria_1.jpeg").write_bytes(good[: len(good) // 2])
    (no / "IM-0900-0001.png").write_text("not an image at all")
    write_image(no / "IM-0901-0001.jpeg", seed=998, size=(20, 20))
    write_image(no / "person502_virus_1.jpeg", seed=997)  # a pneumonia file name in the NORMAL folder
    Image.new("1", (12000, 12000)).save(no / "IM-0902-0001.png")
    # readable images that no chest radiograph is: a colour photo, a blank frame (a 5:1 strip is kept: a source may
    # hold crops of real X-rays; only an upload for a diagnosis is refused for its proportions)
    rng = np.random.default_rng(7)
    Image.fromarray(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8), "RGB").save(no / "IM-0903-0001.png")
    Image.new("L", (80, 60), 128).save(no / "IM-0904-0001.png")
    write_image(no / "IM-0905-0001.png", seed=996, size=(300, 60))
    return {
        "train/PNEUMONIA/person500_bacteria_1.jpeg": "empty_file",
        "train/PNEUMONIA/person501_bacteria_1.jpeg": "truncated",
        "train/NORMAL/IM-0900-0001.png": "not_an_image",
        "train/NORMAL/IM-0901-0001.jpeg": "too_small",
        "train/NORMAL/person502_virus_1.jpeg": "label_mismatch",
        "train/NORMAL/IM-0902-0001.png": "decompression_bomb",
        "train/NORMAL/IM-0903-0001.png": "not_a_chest_radiograph",
        "train/NORMAL/IM-0904-0001.png": "not_a_chest_radiograph",
    }


def test_index_kaggle_layout(kaggle_dir, tmp_path) -> None:
    result = index_source(kaggle_dir, tmp_path / "out", workers=1)
    m = Manifest.load(tmp_path / "out")
    assert len(m) == 14 * 3 + 12 * 2 + 2 + 6 == len(result.manifest)
    r = next(r for r in m.records if r.path.endswith("person101_bacteria_2.jpeg"))
    assert (r.label, r.patient_id, r.split, r.source, r.width, r.height) == (
        "PNEUMONIA",
        "101",
        "train",
        "real",
        48,
        40,
    )
    assert r.sha256 == __import__("hashlib").sha256((kaggle_dir / r.path).read_bytes()).hexdigest()
    assert {r.split for r in m.records} == {"train", "val", "test"}
    assert next(r for r in m.records if "IM-0003-0001" in r.path).patient_id == "IM-0003"


def test_class_folder_names_are_case_insensitive(tmp_path) -> None:
    root = make_kaggle(tmp_path / "src", test=False)
    (root / "train" / "NORMAL").rename(root / "train" / "normal")
    (root / "train" / "PNEUMONIA").rename(root / "train" / "Pneumonia")
    m = index_source(root, tmp_path / "out", workers=1).manifest
    assert {r.label for r in m.records} == {"NORMAL", "PNEUMONIA"}


def test_each_bad_file_is_reported_and_skipped_and_source_untouched(kaggle_dir, tmp_path) -> None:
    expected = _add_bad_files(kaggle_dir)
    (kaggle_dir / "train" / "NORMAL" / "notes.txt").write_text("ignored")
    (kaggle_dir / "README.md").write_text("ignored")  # beside the split folders: not an image to move into them
    before = tree_digest(kaggle_dir)
    result = index_source(kaggle_dir, tmp_path / "out", workers=2)
    assert tree_digest(kaggle_dir) == before
    with open(tmp_path / "out" / "problems.csv") as f:
        found = {row["path"]: row["kind"] for row in csv.DictReader(f)}
    assert found == expected
    paths = {r.path for r in result.manifest.records}
    assert not paths & set(expected)
    report = json.loads((tmp_path / "out" / "index_report.json").read_text())
    assert report["problems"]["truncated"] == 1 and report["images_ok"] == len(paths)
    with open(tmp_path / "out" / "problems.csv") as f:
        why = {row["path"].rsplit("/", 1)[1]: row["detail"] for row in csv.DictReader(f)}
    assert "in colour" in why["IM-0903-0001.png"] and "blank" in why["IM-0904-0001.png"]
    assert "IM-0905-0001.png" not in why and "train/NORMAL/IM-0905-0001.png" in paths
    assert report["ignored_files"] == [
        f"{name}: not an image by its extension (looked for .dcm, .dicom, .jpeg, .jpg, .png) nor a DICOM file"
        for name in ("README.md", "train/NORMAL/notes.txt")
    ]
    assert not list((tmp_path / "out").glob(".*.tmp"))  # atomic writes leave no temp files


def test_kaggles_archive_with_its_second_copy_inside_indexes_the_top_tree_once(kaggle_dir, tmp_path) -> None:
    """chest_xray.zip from Kaggle unpacks to chest_xray/{train,test,val} plus chest_xray/chest_xray/{...} (the same
    images again) and __MACOSX/: the top tree is indexed, the copy is reported as a copy, not as misplaced."""
    alone = index_source(kaggle_dir, tmp_path / "alone", workers=1).manifest
    shutil.copytree(kaggle_dir, tmp_path / "copy")
    shutil.move(tmp_path / "copy", kaggle_dir / "chest_xray")
    (kaggle_dir / "__MACOSX" / "chest_xray").mkdir(parents=True)
    (kaggle_dir / "__MACOSX" / "chest_xray" / "._IM-0001-0001.jpeg").write_bytes(b"\0\x05\x16\x07")
    result = index_source(kaggle_dir, tmp_path / "out", workers=1)
    assert sorted(r.path for r in result.manifest.records) == sorted(r.path for r in alone.records)
    ignored = json.loads((tmp_path / "out" / "index_report.json").read_text())["ignored_files"]
    nested = [line for line in ignored if line.startswith("chest_xray/")]
    assert len(nested) == len(list((kaggle_dir / "chest_xray").rglob("*.*")))
    assert all("in a second train/val/test tree inside chest_xray/" in line for line in nested)
    assert "__MACOSX/chest_xray/._IM-0001-0001.jpeg: a thumbnail or system file, not an X-ray" in ignored


def test_strict_fails_on_any_bad_file(kaggle_dir, tmp_path) -> None:
    (kaggle_dir / "train" / "NORMAL" / "IM-0900-0001.png").write_text("text")
    with pytest.raises(InputError, match=r"1 bad file.*IM-0900-0001.png.*without --strict"):
        index_source(kaggle_dir, tmp_path / "out", strict=True, workers=1)


def test_converted_modes_are_counted(kaggle_dir, tmp_path) -> None:
    write_image(kaggle_dir / "train" / "NORMAL" / "IM-0700-0001.png", seed=5, mode="RGB")
    write_image(kaggle_dir / "train" / "NORMAL" / "IM-0701-0001.png", seed=6, mode="RGBA")
    arr16 = (np.arange(40 * 40).reshape(40, 40) * 40).astype(np.uint16)
    Image.fromarray(arr16).save(kaggle_dir / "train" / "NORMAL" / "IM-0702-0001.png")
    report = index_source(kaggle_dir, tmp_path / "out", workers=1).report
    conv = report["converted_to_8bit_grayscale"]
    assert conv["RGB"] == 1 and conv["RGBA"] == 1 and sum(conv.values()) == 3


def test_duplicates_within_split_are_reported_across_splits_are_an_error(kaggle_dir, tmp_path) -> None:
    pn = kaggle_dir / "train" / "PNEUMONIA"
    shutil.copy(pn / "person100_virus_0.jpeg", pn / "person100_virus_9.jpeg")
    report = index_source(kaggle_dir, tmp_path / "a", workers=1).report
    assert report["duplicates_within_split"] == [
        ["train/PNEUMONIA/person100_virus_0.jpeg", "train/PNEUMONIA/person100_virus_9.jpeg"]
    ]
    shutil.copy(pn / "person101_bacteria_0.jpeg", kaggle_dir / "test" / "PNEUMONIA" / "person950_virus_1.jpeg")
    with pytest.raises(LeakageError, match="byte-identical across splits"):
        index_source(kaggle_dir, tmp_path / "b", workers=1)


def test_kermany_numbering_restarts_in_test_so_test_ids_have_their_own_namespace(kaggle_dir, tmp_path) -> None:
    # The full Kaggle download: train's person100 is not test's person100 (Kermany numbered test afresh).
    write_image(kaggle_dir / "test" / "PNEUMONIA" / "person100_virus_77.jpeg", seed=4242)
    write_image(kaggle_dir / "test" / "NORMAL" / "IM-0003-0009.jpeg", seed=4243)
    m = index_source(kaggle_dir, tmp_path / "out", workers=1).manifest
    ids = {r.path: r.patient_id for r in m.records}
    assert ids["test/PNEUMONIA/person100_virus_77.jpeg"] == "test:100"
    assert ids["train/PNEUMONIA/person100_virus_0.jpeg"] == "100"
    assert ids["test/NORMAL/IM-0003-0009.jpeg"] == "test:IM-0003"
    assert ids["val/PNEUMONIA/person1946_bacteria_4874.jpeg"] == "1946"  # val shares train's namespace
    assert any("restarts in the test folder" in n for n in m.meta["notes"])


def test_patient_in_train_and_val_of_the_source_is_an_error_with_true_advice(kaggle_dir, tmp_path) -> None:
    write_image(kaggle_dir / "val" / "PNEUMONIA" / "person100_virus_77.jpeg", seed=4242)
    with pytest.raises(LeakageError, match=r"patient.*person100.*source itself.*move the patient's images"):
        index_source(kaggle_dir, tmp_path / "out", workers=1)


def test_csv_patient_in_train_and_test_is_an_error_naming_the_column(tmp_path) -> None:
    src = tmp_path / "h"
    for i, name in enumerate("abcd"):
        write_image(src / f"{name}.png", seed=i)
    rows = "a.png,NORMAL,P1,train\nb.png,PNEUMONIA,P2,train\nc.png,NORMAL,P1,test\nd.png,PNEUMONIA,P3,test\n"
    (src / "l.csv").write_text("path,label,patient_id,split\n" + rows)
    with pytest.raises(LeakageError, match=r"1 patient.*split or patient_id column"):
        index_source(src / "l.csv", tmp_path / "out", workers=1)


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("missing", "does not exist"),
        ("empty", "no train/val/test or NORMAL/PNEUMONIA folders"),
        ("no_images", "no images found"),
        ("single_class", "only NORMAL images"),
        ("unpacked_one_level_up", r"folders here, but \S*src/chest_xray has: give that"),
    ],
)
def test_unusable_sources_raise_one_clear_sentence(tmp_path, setup: str, message: str) -> None:
    src = tmp_path / "src"
    if setup == "empty":
        src.mkdir()
    elif setup == "no_images":
        (src / "train" / "NORMAL").mkdir(parents=True)
    elif setup == "single_class":
        write_image(src / "train" / "NORMAL" / "IM-0001-0001.jpeg", seed=1)
    elif setup == "unpacked_one_level_up":  # archive.zip -> src/chest_xray/train/...: the user gave src
        (src / "__MACOSX" / "train").mkdir(parents=True)  # a system folder is never the suggestion
        write_image(src / "chest_xray" / "train" / "NORMAL" / "IM-0001-0001.jpeg", seed=1)
    with pytest.raises(InputError, match=message):
        index_source(src, tmp_path / "out", workers=1)


def test_medmnist_npz(tmp_path) -> None:
    npz = make_npz(tmp_path / "pneumoniamnist_28.npz")
    result = index_source(npz, tmp_path / "out", workers=1)
    m = result.manifest
    assert len(m) == 60 and all(r.patient_id == "" for r in m.records)
    assert m.records[0].path.startswith("pneumoniamnist_28.npz#")
    assert "no patient ids" in " ".join(m.meta["notes"])
    assert {r.split for r in m.records} == {"train", "val", "test"}


def test_csv_with_dicom_hashes_patient_ids_and_never_stores_them(tmp_path) -> None:
    src = tmp_path / "hospital"
    for i in range(6):
        arr = (np.random.default_rng(i).integers(0, 4096, (40, 40))).astype(np.uint16)
        write_dicom(src / f"n{i}.dcm", arr, patient_id=f"MRN-SECRET-{i // 2}", photometric="MONOCHROME1")
        write_image(src / f"p{i}.png", seed=100 + i)
    rows = [f"n{i}.dcm,normal," for i in range(6)] + [f"p{i}.png,1,P{i // 3}" for i in range(6)]
    (src / "list.csv").write_text("path,label,patient_id\n" + "\n".join(rows) + "\n")
    out = tmp_path / "out"
    m = index_source(src / "list.csv", out, workers=1, salt="s").manifest
    dicom_ids = [r.patient_id for r in m.records if r.path.endswith(".dcm")]
    assert len(set(dicom_ids)) == 3 and all(len(p) == 16 for p in dicom_ids)  # 2 images per hashed patient
    assert {r.patient_id for r in m.records if r.path.endswith(".png")} == {"P0", "P1"}
    for f in out.iterdir():
        if f.is_file():
            text = f.read_text()
            assert "SECRET" not in text and "Doe" not in text, f.name


def test_dicom_ages_are_kept_in_the_manifest_and_summarised(tmp_path, capsys) -> None:
    from pneumolab.cli import main

    src = tmp_path / "site"
    rng = np.random.default_rng(0)
    ages = {"NORMAL": ["034Y", "018M", ""], "PNEUMONIA": ["061Y", "062Y", "095Y"]}
    for label, values in ages.items():
        for i, age in enumerate(values):
            tags = {"PatientAge": age} if age else {}
            pixels = rng.integers(0, 256, (64, 64), dtype=np.uint8)
            write_dicom(src / label / f"{label}{i}.dcm", pixels, patient_id=f"MRN-{label}{i}", **tags)
    out = tmp_path / "out"
    index_source(src, out, workers=1, salt="s")
    loaded = {r.path: r.age_years for r in Manifest.load(out).records}  # the CSV round trip
    assert loaded == {
        "NORMAL/NORMAL0.dcm": 34.0,
        "NORMAL/NORMAL1.dcm": 1.5,
        "NORMAL/NORMAL2.dcm": None,
        "PNEUMONIA/PNEUMONIA0.dcm": 61.0,
        "PNEUMONIA/PNEUMONIA1.dcm": 62.0,
        "PNEUMONIA/PNEUMONIA2.dcm": 90.0,  # stored as "90 or older": over 89 an age identifies
    }
    assert main(["data", "summary", str(out)]) == 0
    assert (
        "patient ages (CSV or DICOM headers): 1-90+ years, known for 5 of 6 train/val images" in capsys.readouterr().out
    )
    # a manifest written before ages were recorded has no such column: it loads, without ages
    rows = list(csv.DictReader((out / "manifest.csv").open()))
    with (out / "manifest.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=[k for k in rows[0] if k != "age_years"], extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    assert {r.age_years for r in Manifest.load(out).records} == {None}


def test_csv_bad_label_is_reported(tmp_path) -> None:
    src = tmp_path / "h"
    write_image(src / "a.png", seed=1)
    write_image(src / "b.png", seed=2)
    write_image(src / "c.png", seed=3)
    (src / "l.csv").write_text("path,label\na.png,NORMAL\nb.png,PNEUMONIA\nc.png,covid\n")
    result = index_source(src / "l.csv", tmp_path / "out", workers=1)
    assert [(p.path, p.kind) for p in result.problems] == [("c.png", "unknown_label")]
    assert "line 4" in result.problems[0].detail


def test_csv_ages_come_before_the_dicom_header_and_a_bad_one_is_reported(tmp_path) -> None:
    src = tmp_path / "h"
    for i, name in enumerate("abcd"):
        write_image(src / f"{name}.png", seed=i)
    write_dicom(src / "e.dcm", np.random.default_rng(5).integers(0, 256, (64, 64), dtype=np.uint8), PatientAge="030Y")
    write_dicom(src / "f.dcm", np.random.default_rng(6).integers(0, 256, (64, 64), dtype=np.uint8), PatientAge="030Y")
    rows = ["a.png,NORMAL,54", "b.png,PNEUMONIA,018M", "c.png,NORMAL,", "d.png,NORMAL,abc", "e.dcm,1,40", "f.dcm,1,"]
    (src / "l.csv").write_text("path,label,Age\n" + "\n".join(rows) + "\n")
    result = index_source(src / "l.csv", tmp_path / "out", workers=1)
    assert [(p.path, p.kind) for p in result.problems] == [("d.png", "bad_age")]
    assert "line 5: age 'abc' is neither years (54, 1.5) nor a DICOM age (054Y, 018M)" in result.problems[0].detail
    ages = {r.path: r.age_years for r in result.manifest.records}
    assert ages == {"a.png": 54.0, "b.png": 1.5, "c.png": None, "e.dcm": 40.0, "f.dcm": 30.0}  # the CSV first


def test_csv_from_excel_on_windows_semicolons_and_backslashes(tmp_path) -> None:
    """Excel in a comma-decimal locale writes ';' between cells (and a BOM); Windows writes 'imgs\\a.png'."""
    src = tmp_path / "h"
    write_image(src / "imgs" / "a.png", seed=1)
    write_image(src / "imgs" / "b.png", seed=2)
    (src / "l.csv").write_text("path;label;patient_id\r\nimgs\\a.png;normal;p1\r\nimgs\\b.png;1;p2\r\n", "utf-8-sig")
    m = index_source(src / "l.csv", tmp_path / "out", workers=1).manifest
    assert {(r.path, r.label, r.patient_id) for r in m.records} == {
        ("imgs/a.png", "NORMAL", "p1"),
        ("imgs/b.png", "PNEUMONIA", "p2"),
    }


def test_csv_whose_every_path_is_missing_names_the_first_one_and_where_it_was_looked_for(tmp_path) -> None:
    src = tmp_path / "h"
    src.mkdir()
    (src / "l.csv").write_text("path,label\nscans/a.png,NORMAL\nscans/b.png,PNEUMONIA\n")
    with pytest.raises(
        InputError, match=r"none of the 2 images could be read \(first: scans/a.png: no such file \(looked for "
    ):
        index_source(src / "l.csv", tmp_path / "out", workers=1)
    assert str(src / "scans" / "a.png") in (tmp_path / "out" / "problems.csv").read_text()


def test_a_pacs_export_in_class_folders_indexes_dicom_files_without_extensions(tmp_path) -> None:
    """site/NORMAL/<study>/IM0001: DICOM by content, any depth; patient ids are the hashed DICOM PatientIDs."""
    src = tmp_path / "site"
    rng = np.random.default_rng(0)
    labels = ["NORMAL", "NORMAL", "PNEUMONIA", "PNEUMONIA"]
    for i, label in enumerate(labels):
        pixels = rng.integers(0, 256, (64, 64), dtype=np.uint8)
        write_dicom(src / label / f"study{i}" / "IM0001", pixels, patient_id=f"MRN-{i // 2}")  # two per patient
    (src / "NORMAL" / "study0" / "notes").write_text("not an image, not DICOM")
    result = index_source(src, tmp_path / "out", workers=1, salt="s")
    records = {r.path: r for r in result.manifest.records}
    assert set(records) == {
        f"{c}/study{i}/IM0001" for i, c in enumerate(["NORMAL", "NORMAL", "PNEUMONIA", "PNEUMONIA"])
    }
    assert records["NORMAL/study0/IM0001"].patient_id == records["NORMAL/study1/IM0001"].patient_id != "MRN-0"
    looked = "(looked for .dcm, .dicom, .jpeg, .jpg, .png)"
    assert result.report["ignored_files"] == [
        f"NORMAL/study0/notes: not an image by its extension {looked} nor a DICOM file"
    ]
