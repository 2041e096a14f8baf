import pytest

from pneumolab.data.patient import hash_patient_id, kermany_label_hint, kermany_patient_id


@pytest.mark.parametrize(
    ("name", "pid", "label"),
    [
        ("person123_bacteria_456.jpeg", "123", "PNEUMONIA"),
        ("person1_virus_6.jpeg", "1", "PNEUMONIA"),
        ("train/PNEUMONIA/person0042_virus_7.jpeg", "42", "PNEUMONIA"),
        ("IM-0115-0001.jpeg", "IM-0115", "NORMAL"),
        ("NORMAL2-IM-0427-0001.jpeg", "NORMAL2-IM-0427", "NORMAL"),
        ("NORMAL2-IM-0173-0001-0002.jpeg", "NORMAL2-IM-0173", "NORMAL"),
        ("scan_0001.png", None, None),
        ("personX_bacteria_1.jpeg", None, None),
    ],
)
def test_kermany_patient_id_and_label_hint(name: str, pid: str | None, label: str | None) -> None:
    assert kermany_patient_id(name) == pid
    assert kermany_label_hint(name) == label


@pytest.mark.parametrize(
    ("name", "split", "pid"),
    [
        ("person1_virus_11.jpeg", "test", "test:1"),
        ("person1_bacteria_1.jpeg", "train", "1"),
        ("person1_bacteria_1.jpeg", "val", "1"),
        ("NORMAL2-IM-0427-0001.jpeg", "test", "test:NORMAL2-IM-0427"),
        ("scan_0001.png", "test", None),
    ],
)
def test_test_split_ids_live_in_their_own_namespace(name: str, split: str, pid: str | None) -> None:
    assert kermany_patient_id(name, split) == pid


def test_hash_patient_id_is_stable_salted_and_hides_the_raw_id() -> None:
    a = hash_patient_id("MRN-0042", "salt1")
    assert a == hash_patient_id(" MRN-0042 ", "salt1")  # surrounding spaces do not split a patient
    assert a != hash_patient_id("MRN-0042", "salt2")
    assert a != hash_patient_id("MRN-0043", "salt1")
    assert len(a) == 16 and "0042" not in a
