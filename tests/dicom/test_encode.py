"""Tests for medcf.radiograph.encode: display image -> stored pixels + attributes -> file -> display image."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import apply_voi_lut
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    RLELossless,
)

from medcf.radiograph import encode
from medcf.radiograph.encode import (
    SIGMOID_CLIP,
    TRANSFER_SYNTAXES,
    PixelEncoding,
    attach_pixels,
    decode_display,
    encode_pixels,
    new_uid,
    window_for,
    write_dataset_atomic,
)

ROWS, COLUMNS = 64, 48  # non-square, to catch row/column swaps


def smooth_image(seed: int = 0) -> np.ndarray:
    """A smooth random image spanning exactly [0, 1], shape (ROWS, COLUMNS)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:ROWS, 0:COLUMNS] / max(ROWS, COLUMNS)
    image = np.zeros((ROWS, COLUMNS))
    for _ in range(4):
        fy, fx, phase = rng.uniform(0.5, 3.0), rng.uniform(0.5, 3.0), rng.uniform(0, 2 * np.pi)
        image += rng.uniform(0.5, 1.0) * np.sin(2 * np.pi * (fy * y + fx * x) + phase)
    return (image - image.min()) / (image.max() - image.min())


def new_dataset() -> Dataset:
    """A minimal DX For Presentation dataset with only the SOP identity set."""
    ds = Dataset()
    ds.SOPClassUID = DigitalXRayImageStorageForPresentation
    ds.SOPInstanceUID = new_uid()
    return ds


def encoded_dataset(display: np.ndarray, encoding: PixelEncoding) -> Dataset:
    """A minimal dataset holding ``display`` encoded with ``encoding``."""
    stored, attributes = encode_pixels(display, encoding)
    return attach_pixels(new_dataset(), stored, attributes, encoding.transfer_syntax)


def tolerance(encoding: PixelEncoding) -> float:
    """Largest display error that quantising to whole stored values (and SIGMOID clipping) can cause."""
    half_step = 0.5 / encoding.window_stored_span  # half a stored step through a linear window
    if encoding.voi_function == "SIGMOID":
        steepest_gain = math.log((1 - SIGMOID_CLIP) / SIGMOID_CLIP) / 2  # relative to a linear window
        return half_step * steepest_gain + SIGMOID_CLIP + 1e-6
    return half_step + 1e-6


def windowed_fraction(modality: np.ndarray, ds: Dataset) -> np.ndarray:
    """pydicom's windowing of modality values, normalised by its output range (no rescale in ``ds``)."""
    return apply_voi_lut(np.asarray(modality, dtype=np.float64), ds) / (2**ds.BitsStored - 1)


class TestPixelEncoding:
    def test_defaults_are_valid(self) -> None:
        encoding = PixelEncoding()
        assert encoding.max_stored == 4095
        assert encoding.window_stored_span == pytest.approx(0.9 * 4095)

    @pytest.mark.parametrize(
        ("field", "value"),
        [
            ("photometric", "RGB"),
            ("photometric", "monochrome2"),
            ("bits_stored", 8),
            ("bits_stored", 17),
            ("bits_stored", 12.0),
            ("bits_stored", True),
            ("rescale_slope", 0.0),
            ("rescale_slope", -1.0),
            ("rescale_slope", math.nan),
            ("rescale_intercept", math.inf),
            ("rescale_intercept", "0"),
            ("voi_function", "linear"),
            ("voi_function", "GAMMA"),
            ("window_low_fraction", -0.1),
            ("window_high_fraction", 1.5),
            ("window_low_fraction", 0.95),
            ("transfer_syntax", JPEGLosslessSV1),
            ("transfer_syntax", UID("1.2.3")),
        ],
    )
    def test_bad_value_names_field_and_value(self, field: str, value: object) -> None:
        with pytest.raises(ValueError, match=field) as raised:
            PixelEncoding(**{field: value})
        assert repr(value) in str(raised.value)
        assert "must be" in str(raised.value)

    def test_accepts_all_allowed_syntaxes(self) -> None:
        for uid in TRANSFER_SYNTAXES:
            assert PixelEncoding(transfer_syntax=uid).transfer_syntax == uid


class TestWindowFor:
    """The window attributes map modality lo -> VOI output 0 and hi -> 1 under pydicom's formulas."""

    @pytest.mark.parametrize("voi_function", ["LINEAR", "LINEAR_EXACT", "SIGMOID"])
    def test_window_ends_hit_lo_and_hi(self, voi_function: str) -> None:
        encoding = PixelEncoding(bits_stored=12, voi_function=voi_function)
        lo, hi = 0.05 * 4095, 0.95 * 4095
        _, attributes = encode_pixels(np.zeros((2, 2)), encoding)
        ds = Dataset()
        for keyword in ("WindowCenter", "WindowWidth", "VOILUTFunction", "BitsStored"):
            setattr(ds, keyword, attributes[keyword])
        ds.PixelRepresentation, ds.PhotometricInterpretation = 0, "MONOCHROME2"
        ends = windowed_fraction(np.array([lo, hi]), ds)
        expected = [SIGMOID_CLIP, 1 - SIGMOID_CLIP] if voi_function == "SIGMOID" else [0.0, 1.0]
        np.testing.assert_allclose(ends, expected, atol=1e-9)

    def test_linear_derivation(self) -> None:
        center, width = window_for(100.0, 900.0, "LINEAR")
        assert (center, width) == (500.5, 801.0)
        # the standard's LINEAR formula with c - 0.5 and w - 1 then spans exactly [lo, hi]
        assert (center - 0.5) - (width - 1) / 2 == 100.0
        assert (center - 0.5) + (width - 1) / 2 == 900.0

    def test_linear_exact_is_plain_middle_and_span(self) -> None:
        assert window_for(100.0, 900.0, "LINEAR_EXACT") == (500.0, 800.0)

    def test_unknown_function_raises(self) -> None:
        with pytest.raises(ValueError, match="GAMMA"):
            window_for(0.0, 1.0, "GAMMA")


class TestEncodePixels:
    def test_attributes_describe_the_pixels(self) -> None:
        encoding = PixelEncoding(photometric="MONOCHROME1", bits_stored=14, voi_function="LINEAR_EXACT")
        stored, attributes = encode_pixels(smooth_image(), encoding)
        assert stored.dtype == np.uint16
        assert stored.shape == (ROWS, COLUMNS)
        assert int(stored.max()) <= 2**14 - 1
        assert attributes["Rows"] == ROWS and attributes["Columns"] == COLUMNS
        assert attributes["BitsAllocated"] == 16
        assert (attributes["BitsStored"], attributes["HighBit"]) == (14, 13)
        assert attributes["PixelRepresentation"] == 0
        assert attributes["SamplesPerPixel"] == 1
        assert attributes["PhotometricInterpretation"] == "MONOCHROME1"
        assert attributes["VOILUTFunction"] == "LINEAR_EXACT"
        assert attributes["RescaleType"] == "US"

    @pytest.mark.parametrize("voi_function", ["LINEAR", "LINEAR_EXACT", "SIGMOID"])
    def test_decimal_values_are_short_exact_ds(self, voi_function: str) -> None:
        encoding = PixelEncoding(bits_stored=15, rescale_slope=1 / 3, voi_function=voi_function)
        _, attributes = encode_pixels(smooth_image(), encoding)
        for keyword in ("WindowCenter", "WindowWidth", "RescaleSlope", "RescaleIntercept"):
            text = str(attributes[keyword])
            assert len(text) <= 16
            assert float(text) == attributes[keyword]

    @pytest.mark.parametrize("photometric", ["MONOCHROME1", "MONOCHROME2"])
    @pytest.mark.parametrize("voi_function", ["LINEAR", "LINEAR_EXACT", "SIGMOID"])
    def test_stored_is_monotone_in_display(self, photometric: str, voi_function: str) -> None:
        display = smooth_image()
        stored, _ = encode_pixels(display, PixelEncoding(photometric=photometric, voi_function=voi_function))
        steps = np.diff(stored.ravel()[np.argsort(display.ravel())].astype(np.int64))
        if photometric == "MONOCHROME1":  # stored high = displayed dark
            assert np.all(steps <= 0)
            assert np.corrcoef(stored.ravel(), display.ravel())[0, 1] < -0.9
        else:
            assert np.all(steps >= 0)
            assert np.corrcoef(stored.ravel(), display.ravel())[0, 1] > 0.9

    def test_window_fractions_set_stored_ends(self) -> None:
        encoding = PixelEncoding(bits_stored=10, voi_function="LINEAR_EXACT")
        stored, _ = encode_pixels(np.array([[0.0, 1.0]]), encoding)
        assert stored.tolist() == [[round(0.05 * 1023), round(0.95 * 1023)]]

    def test_rescale_moves_stored_values(self) -> None:
        plain = PixelEncoding(bits_stored=12, voi_function="LINEAR_EXACT")
        rescaled = PixelEncoding(
            bits_stored=12, voi_function="LINEAR_EXACT", rescale_slope=2.0, rescale_intercept=-1000.0
        )
        display = smooth_image()
        np.testing.assert_array_equal(encode_pixels(display, plain)[0], encode_pixels(display, rescaled)[0])
        attributes = encode_pixels(display, rescaled)[1]
        assert attributes["WindowCenter"] == pytest.approx(0.5 * 4095 * 2.0 - 1000.0)

    @pytest.mark.parametrize(
        ("display", "message"),
        [
            (np.zeros(5), "2-D"),
            (np.zeros((0, 3)), "2-D"),
            (np.full((2, 2), np.nan), "NaN"),
            (np.full((2, 2), 1.5), r"\[0, 1\]"),
            (np.full((2, 2), -0.1), r"\[0, 1\]"),
        ],
    )
    def test_bad_display_raises(self, display: np.ndarray, message: str) -> None:
        with pytest.raises(ValueError, match=message):
            encode_pixels(display, PixelEncoding())


class TestAttachPixels:
    def test_uncompressed_sets_little_endian_words(self) -> None:
        stored, attributes = encode_pixels(smooth_image(), PixelEncoding())
        ds = attach_pixels(new_dataset(), stored, attributes, ExplicitVRLittleEndian)
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert ds["PixelData"].VR == "OW"
        assert ds.PixelData == stored.astype("<u2").tobytes()
        np.testing.assert_array_equal(ds.pixel_array, stored)

    @pytest.mark.parametrize("transfer_syntax", [RLELossless, JPEG2000Lossless])
    def test_compressed_keeps_instance_uid_and_pixels(self, transfer_syntax: UID) -> None:
        stored, attributes = encode_pixels(smooth_image(), PixelEncoding(transfer_syntax=transfer_syntax))
        ds = new_dataset()
        instance_uid = ds.SOPInstanceUID
        attach_pixels(ds, stored, attributes, transfer_syntax)
        assert ds.SOPInstanceUID == instance_uid
        assert ds.file_meta.TransferSyntaxUID == transfer_syntax
        np.testing.assert_array_equal(ds.pixel_array, stored)

    def test_shape_mismatch_raises(self) -> None:
        stored, attributes = encode_pixels(smooth_image(), PixelEncoding())
        with pytest.raises(ValueError, match="Rows, Columns"):
            attach_pixels(new_dataset(), stored.T.copy(), attributes, ExplicitVRLittleEndian)

    def test_wrong_dtype_raises(self) -> None:
        stored, attributes = encode_pixels(smooth_image(), PixelEncoding())
        with pytest.raises(ValueError, match="uint16"):
            attach_pixels(new_dataset(), stored.astype(np.int32), attributes, ExplicitVRLittleEndian)

    def test_unsupported_syntax_raises(self) -> None:
        stored, attributes = encode_pixels(smooth_image(), PixelEncoding())
        with pytest.raises(ValueError, match="transfer syntax"):
            attach_pixels(new_dataset(), stored, attributes, JPEGLosslessSV1)


class TestRoundTrip:
    """encode -> attach -> write -> dcmread -> decode_display gives the display image back."""

    @pytest.mark.parametrize("transfer_syntax", TRANSFER_SYNTAXES, ids=lambda uid: uid.keyword)
    @pytest.mark.parametrize("bits_stored", [12, 15, 16])
    @pytest.mark.parametrize("voi_function", ["LINEAR", "LINEAR_EXACT", "SIGMOID"])
    @pytest.mark.parametrize("photometric", ["MONOCHROME1", "MONOCHROME2"])
    def test_file_round_trip(
        self, tmp_path: Path, photometric: str, voi_function: str, bits_stored: int, transfer_syntax: UID
    ) -> None:
        encoding = PixelEncoding(photometric, bits_stored, voi_function=voi_function, transfer_syntax=transfer_syntax)
        display = smooth_image(seed=bits_stored)
        path = tmp_path / "image.dcm"
        write_dataset_atomic(encoded_dataset(display, encoding), path)
        read = pydicom.dcmread(path)
        assert read.file_meta.TransferSyntaxUID == transfer_syntax
        assert (read.Rows, read.Columns) == (ROWS, COLUMNS)
        decoded = decode_display(read)
        assert decoded.dtype == np.float32
        assert decoded.shape == (ROWS, COLUMNS)
        assert np.abs(decoded - display).max() <= tolerance(encoding)

    @pytest.mark.parametrize(("slope", "intercept"), [(0.5, -1024.0), (2.5, 100.0), (1 / 3, 0.0)])
    @pytest.mark.parametrize("voi_function", ["LINEAR", "LINEAR_EXACT", "SIGMOID"])
    def test_rescaled_round_trip(self, tmp_path: Path, voi_function: str, slope: float, intercept: float) -> None:
        encoding = PixelEncoding(
            "MONOCHROME1", 12, rescale_slope=slope, rescale_intercept=intercept, voi_function=voi_function
        )
        display = smooth_image(seed=3)
        path = tmp_path / "image.dcm"
        write_dataset_atomic(encoded_dataset(display, encoding), path)
        assert np.abs(decode_display(pydicom.dcmread(path)) - display).max() <= tolerance(encoding)

    def test_in_memory_decode_matches_file_decode(self, tmp_path: Path) -> None:
        encoding = PixelEncoding("MONOCHROME1", 16, voi_function="SIGMOID", transfer_syntax=RLELossless)
        ds = encoded_dataset(smooth_image(), encoding)
        write_dataset_atomic(ds, tmp_path / "image.dcm")
        np.testing.assert_array_equal(decode_display(ds), decode_display(pydicom.dcmread(tmp_path / "image.dcm")))


class TestDecodeDisplay:
    @staticmethod
    def hand_built(photometric: str = "MONOCHROME2") -> Dataset:
        """10-bit LINEAR_EXACT window centre 512, width 1024, no rescale, stored [0, 256, 512, 768, 1023]."""
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.Rows, ds.Columns, ds.SamplesPerPixel = 1, 5, 1
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 10, 9, 0
        ds.PhotometricInterpretation = photometric
        ds.WindowCenter, ds.WindowWidth, ds.VOILUTFunction = 512, 1024, "LINEAR_EXACT"
        ds.PixelData = np.array([0, 256, 512, 768, 1023], dtype="<u2").tobytes()
        return ds

    def test_hand_built_monochrome2(self) -> None:
        expected = [[0.0, 0.25, 0.5, 0.75, 0.5 + 511 / 1024]]
        np.testing.assert_allclose(decode_display(self.hand_built()), expected, atol=1e-6)

    def test_hand_built_monochrome1_inverts(self) -> None:
        expected = [[1.0, 0.75, 0.5, 0.25, 0.5 - 511 / 1024]]
        np.testing.assert_allclose(decode_display(self.hand_built("MONOCHROME1")), expected, atol=1e-6)

    def test_default_function_is_linear(self) -> None:
        ds = self.hand_built()
        del ds.VOILUTFunction
        ds.WindowCenter, ds.WindowWidth = 512.5, 1025  # LINEAR: c - 0.5 = 512, w - 1 = 1024
        np.testing.assert_allclose(decode_display(ds), decode_display(self.hand_built()), atol=1e-6)

    def test_rescale_is_applied(self) -> None:
        ds = self.hand_built()
        ds.RescaleSlope, ds.RescaleIntercept = 2, -100
        ds.WindowCenter, ds.WindowWidth = 2 * 512 - 100, 2 * 1024
        np.testing.assert_allclose(decode_display(ds), decode_display(self.hand_built()), atol=1e-6)

    @pytest.mark.parametrize(
        "keyword", ["WindowCenter", "WindowWidth", "PixelData", "BitsStored", "PhotometricInterpretation"]
    )
    def test_missing_tag_raises_naming_it(self, keyword: str) -> None:
        ds = self.hand_built()
        delattr(ds, keyword)
        with pytest.raises(ValueError, match=keyword):
            decode_display(ds)

    def test_missing_transfer_syntax_raises(self) -> None:
        ds = self.hand_built()
        del ds.file_meta
        with pytest.raises(ValueError, match="TransferSyntaxUID"):
            decode_display(ds)

    def test_half_rescale_raises(self) -> None:
        ds = self.hand_built()
        ds.RescaleSlope = 2
        with pytest.raises(ValueError, match="RescaleIntercept"):
            decode_display(ds)

    def test_colour_raises(self) -> None:
        ds = self.hand_built("RGB")
        with pytest.raises(ValueError, match="RGB"):
            decode_display(ds)


class TestWriteDatasetAtomic:
    def test_writes_file_meta(self, tmp_path: Path) -> None:
        ds = encoded_dataset(smooth_image(), PixelEncoding(transfer_syntax=RLELossless))
        path = tmp_path / "image.dcm"
        write_dataset_atomic(ds, path)
        meta = pydicom.dcmread(path).file_meta
        assert meta.MediaStorageSOPClassUID == DigitalXRayImageStorageForPresentation
        assert meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert meta.ImplementationClassUID == PYDICOM_IMPLEMENTATION_UID
        assert meta.TransferSyntaxUID == RLELossless
        assert path.read_bytes()[128:132] == b"DICM"
        assert list(tmp_path.iterdir()) == [path]

    def test_replaces_existing_file(self, tmp_path: Path) -> None:
        path = tmp_path / "image.dcm"
        path.write_bytes(b"old")
        write_dataset_atomic(encoded_dataset(smooth_image(), PixelEncoding()), path)
        assert pydicom.dcmread(path).Rows == ROWS
        assert list(tmp_path.iterdir()) == [path]

    @staticmethod
    def failing_dcmwrite(file: object, ds: Dataset, **kwargs: object) -> None:
        """Write a few bytes, then fail like an encoder error half-way through."""
        file.write(b"partial")  # type: ignore[attr-defined]
        raise RuntimeError("encoder failed")

    def test_failure_leaves_no_target_and_no_temp(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(encode.pydicom, "dcmwrite", self.failing_dcmwrite)
        with pytest.raises(RuntimeError, match="encoder failed"):
            write_dataset_atomic(encoded_dataset(smooth_image(), PixelEncoding()), tmp_path / "image.dcm")
        assert list(tmp_path.iterdir()) == []

    def test_failure_keeps_existing_target(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        path = tmp_path / "image.dcm"
        path.write_bytes(b"old")
        monkeypatch.setattr(encode.pydicom, "dcmwrite", self.failing_dcmwrite)
        with pytest.raises(RuntimeError):
            write_dataset_atomic(encoded_dataset(smooth_image(), PixelEncoding()), path)
        assert list(tmp_path.iterdir()) == [path]
        assert path.read_bytes() == b"old"

    @pytest.mark.parametrize("keyword", ["SOPClassUID", "SOPInstanceUID"])
    def test_missing_sop_tag_raises(self, tmp_path: Path, keyword: str) -> None:
        ds = encoded_dataset(smooth_image(), PixelEncoding())
        delattr(ds, keyword)
        with pytest.raises(ValueError, match=keyword):
            write_dataset_atomic(ds, tmp_path / "image.dcm")
        assert list(tmp_path.iterdir()) == []

    def test_missing_pixels_raises(self, tmp_path: Path) -> None:
        with pytest.raises(ValueError, match="attach_pixels"):
            write_dataset_atomic(new_dataset(), tmp_path / "image.dcm")
        assert list(tmp_path.iterdir()) == []


class TestNewUid:
    def test_random_uids_are_valid_and_distinct(self) -> None:
        first, second = new_uid(), new_uid()
        assert first != second
        assert UID(first).is_valid and len(first) <= 64

    def test_entropy_makes_it_deterministic(self) -> None:
        assert new_uid("cxr", 7, "study") == new_uid("cxr", 7, "study")
        assert new_uid("cxr", 7, "study") != new_uid("cxr", 8, "study")
        assert UID(new_uid("cxr", 7)).is_valid
