import io

import numpy as np
import pytest
from conftest import write_dicom, write_image
from PIL import Image

from pneumolab.data.readers import decode_bytes, sniff_format
from pneumolab.errors import ImageReadError


def _png_bytes(arr: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, mode).save(buf, format="PNG") if mode else Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def test_grayscale_jpeg_is_read_unchanged_in_shape(tmp_path) -> None:
    p = write_image(tmp_path / "a.jpeg", seed=1, size=(64, 48))
    img = decode_bytes(p.read_bytes(), "a.jpeg")
    assert img.pixels.shape == (48, 64) and img.pixels.dtype == np.uint8
    assert img.mode == "L" and not img.converted


def test_sixteen_bit_png_is_scaled_to_its_range() -> None:
    arr = np.zeros((40, 40), np.uint16)
    arr[0, 0], arr[0, 1], arr[0, 2] = 1000, 2000, 3000  # range 0..3000 -> 0..255
    img = decode_bytes(_png_bytes(arr), "x.png")
    assert img.converted and img.mode.startswith("I")
    assert img.pixels[0, :3].tolist() == [85, 170, 255]  # round(1000*255/3000), round(2000*255/3000), 255
    assert img.pixels[5, 5] == 0


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "P", "LA"])
def test_colour_modes_are_converted_to_grayscale(tmp_path, mode: str) -> None:
    gray = np.full((40, 40), 100, np.uint8)
    src = Image.fromarray(gray, "L").convert(mode)
    buf = io.BytesIO()
    src.save(buf, format="PNG")
    img = decode_bytes(buf.getvalue(), "c.png")
    assert img.converted and img.mode == mode
    assert img.pixels.shape == (40, 40) and abs(int(img.pixels.mean()) - 100) <= 1


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_exif_orientation_is_applied_as_a_viewer_shows_the_image(fmt: str) -> None:
    stored = np.zeros((40, 80), np.uint8)  # landscape raster, bright top-left corner
    stored[:8, :8] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    buf = io.BytesIO()
    Image.fromarray(stored).save(buf, format=fmt, exif=exif)
    img = decode_bytes(buf.getvalue(), "turned")
    assert img.pixels.shape == (80, 40)  # portrait, as shown
    assert img.pixels[:4, -4:].min() > 200 and img.pixels[:4, :4].max() < 50  # the corner is now top-right


def test_cmyk_jpeg_is_converted_dark_stays_dark() -> None:
    buf = io.BytesIO()
    Image.new("CMYK", (40, 40), (0, 0, 0, 255)).save(buf, format="JPEG")  # full black ink
    img = decode_bytes(buf.getvalue(), "k.jpg")
    assert img.mode == "CMYK" and img.pixels.max() < 30


def test_dicom_monochrome1_16bit_with_window_is_inverted_and_scaled(tmp_path) -> None:
    arr = np.tile(np.array([0, 1024, 2048, 4095], np.uint16), (40, 10))  # (40, 40)
    p = write_dicom(tmp_path / "m1.dcm", arr, photometric="MONOCHROME1", window=(2048, 4096))
    img = decode_bytes(p.read_bytes(), "m1.dcm")
    assert img.mode == "DICOM MONOCHROME1 16-bit" and img.converted
    row = img.pixels[0, :4].tolist()
    assert row[0] == 255 and row[3] == 0  # MONOCHROME1: the lowest value is white
    assert row[0] > row[1] > row[2] > row[3]
    assert img.patient_key == "MRN-0042"  # raw id is handed to the caller for hashing only


def test_dicom_monochrome2_8bit(tmp_path) -> None:
    arr = np.tile(np.array([10, 20, 30, 40], np.uint8), (40, 10))
    p = write_dicom(tmp_path / "m2.dcm", arr)
    img = decode_bytes(p.read_bytes(), "m2.dcm")
    assert img.pixels[0, :4].tolist() == [0, 85, 170, 255]


def test_dicom_window_clips_outside_values(tmp_path) -> None:
    arr = np.tile(np.array([0, 900, 1100, 4000], np.uint16), (40, 10))
    p = write_dicom(tmp_path / "w.dcm", arr, window=(1000, 200))  # window 900..1100
    px = decode_bytes(p.read_bytes(), "w.dcm").pixels[0, :4].tolist()
    assert px[0] == px[1] == 0 and px[2] == px[3] == 255


def _padded(value: int) -> np.ndarray:
    """(40, 40) uint16: a 1000..3300 ramp inside an 8-pixel border of ``value``."""
    arr = np.full((40, 40), value, np.uint16)
    arr[8:32, 8:32] = 1000 + 50 * np.indices((24, 24)).sum(0)
    return arr


def test_dicom_pixel_padding_is_black_and_out_of_the_range(tmp_path) -> None:
    arr = _padded(65535)  # the area outside the detector, coded far above the image's values
    inside = arr[8:32, 8:32]
    px = decode_bytes(write_dicom(tmp_path / "p.dcm", arr, PixelPaddingValue=65535).read_bytes(), "p.dcm").pixels
    assert px[:8].max() == 0 and px[8:32, 8:32].min() == 0 and px[8:32, 8:32].max() == 255
    expected = np.round((inside - 1000.0) * (255.0 / 2300))  # the ramp's own range, 1000..3300, onto 0..255
    np.testing.assert_array_equal(px[8:32, 8:32], expected)
    # without the tag the padding sets the range and the X-ray is squashed into a few grey levels
    squashed = decode_bytes(write_dicom(tmp_path / "q.dcm", arr).read_bytes(), "q.dcm").pixels
    assert squashed[8:32, 8:32].max() == 9 and squashed[:8].min() == 255  # 2,300 of 64,535 levels: 10 greys
    # MONOCHROME1 with a padding range at the bottom: the image inverted, the padding still black
    arr = _padded(3)
    tags = {"PixelPaddingValue": 0, "PixelPaddingRangeLimit": 10}
    m1 = write_dicom(tmp_path / "m1.dcm", arr, photometric="MONOCHROME1", **tags).read_bytes()
    px = decode_bytes(m1, "m1.dcm").pixels
    assert px[:8].max() == 0 and px[8, 8] == 255 and px[31, 31] == 0


@pytest.mark.parametrize(
    ("text", "years"),
    [
        ("54", 54.0),
        (" 1.5 ", 1.5),
        ("054Y", 54.0),
        ("018m", 1.5),
        ("0", 0.0),
        ("", None),
        ("abc", None),
        ("-3", None),
        ("nan", None),
        ("inf", None),
        ("54 years", None),
    ],
)
def test_age_in_years_reads_numbers_and_dicom_ages(text, years) -> None:
    from pneumolab.data.readers import age_in_years

    assert age_in_years(text) == (None if years is None else pytest.approx(years))


@pytest.mark.parametrize(
    ("tags", "years"),
    [
        ({"PatientAge": "054Y"}, 54.0),
        ({"PatientAge": "018M"}, 1.5),
        ({"PatientAge": "010W"}, 70 / 365.25),
        ({"PatientAge": "100D"}, 100 / 365.25),
        ({"PatientBirthDate": "20200115", "StudyDate": "20230115"}, 1096 / 365.25),  # no PatientAge: the dates
        ({"PatientAge": "054Y", "PatientBirthDate": "20200115", "StudyDate": "20230115"}, 54.0),  # the age first
        ({}, None),  # anonymised: no age at all
        ({"PatientAge": "54"}, None),  # no unit: not guessed
        ({"PatientBirthDate": "20200115", "StudyDate": "20231340"}, None),  # an impossible date
        ({"PatientBirthDate": "2020", "StudyDate": "20230115"}, None),  # a partial date
        ({"PatientBirthDate": "20240115", "StudyDate": "20230115"}, None),  # born after the study
    ],
)
@pytest.mark.filterwarnings("ignore:Invalid value for VR")  # pydicom, writing the malformed values on purpose
def test_dicom_patient_age_in_years(tmp_path, tags, years) -> None:
    img = decode_bytes(write_dicom(tmp_path / "a.dcm", np.full((40, 40), 9, np.uint8), **tags).read_bytes(), "a")
    assert img.age_years == (None if years is None else pytest.approx(years))


def test_dicom_without_pixel_data_is_refused_without_patient_data(tmp_path) -> None:
    p = write_dicom(tmp_path / "sr.dcm", np.zeros((1, 1), np.uint8), with_pixels=False)
    with pytest.raises(ImageReadError) as e:
        decode_bytes(p.read_bytes(), "sr.dcm")
    assert e.value.kind == "no_pixel_data"
    assert "Doe" not in str(e.value) and "MRN" not in str(e.value)


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (b"", "empty_file"),
        (b"hello, I am a text file with a .png name", "not_an_image"),
        (b"\x89PNG\r\n\x1a\n" + b"\0" * 40, "corrupt"),
    ],
)
def test_bad_bytes_raise_specific_kinds(data: bytes, kind: str) -> None:
    with pytest.raises(ImageReadError) as e:
        decode_bytes(data, "bad.png")
    assert e.value.kind == kind and e.value.path == "bad.png"


def test_truncated_jpeg_is_detected(tmp_path) -> None:
    data = write_image(tmp_path / "t.jpeg", seed=3, size=(256, 256)).read_bytes()
    with pytest.raises(ImageReadError) as e:
        decode_bytes(data[: len(data) // 2], "t.jpeg")
    assert e.value.kind == "truncated"


def test_decompression_bomb_is_refused_before_decoding() -> None:
    buf = io.BytesIO()
    Image.new("1", (12000, 12000)).save(buf, format="PNG")  # 144 Mpx that compress to a few kB
    assert len(buf.getvalue()) < 100_000
    with pytest.raises(ImageReadError) as e:
        decode_bytes(buf.getvalue(), "bomb.png")
    assert e.value.kind == "decompression_bomb" and "12000x12000" in e.value.detail


def test_too_small_image_is_refused(tmp_path) -> None:
    p = write_image(tmp_path / "s.png", seed=1, size=(31, 64))
    with pytest.raises(ImageReadError) as e:
        decode_bytes(p.read_bytes(), "s.png")
    assert e.value.kind == "too_small" and "31x64" in e.value.detail


def test_sniffing_ignores_the_extension(tmp_path) -> None:
    p = write_image(tmp_path / "really_a_png.jpeg", seed=1, fmt="PNG")
    assert sniff_format(p.read_bytes()[:132]) == "png"
    assert decode_bytes(p.read_bytes(), p.name).pixels.shape == (40, 48)


def test_read_errors_survive_the_trip_from_a_worker_process() -> None:
    import pickle

    e = pickle.loads(pickle.dumps(ImageReadError("a.png", "truncated", "image file is truncated")))
    assert (e.path, e.kind, e.detail, str(e)) == (
        "a.png",
        "truncated",
        "image file is truncated",
        "a.png: image file is truncated",
    )
