"""Counterfactual files lie the way their source lies: on every side and view of the sample mammograms and on
the real CBIS-DDSM film scans, the written breast faces the same side as the source's, and its tags agree.

The prepared image itself stands in for the counterfactual (the writer cannot tell the difference), so what is
checked is the writer's geometry, not a model."""

from pathlib import Path

import pandas as pd
import pydicom
import pytest
from mammograms import gen_cases

from medcf.core.interventions import parse_intervention
from medcf.outputs.pseudonyms import Pseudonyms
from medcf.outputs.writers import CounterfactualWriter, Drawn, SourceImage
from medcf.phantoms.mammo import MAMMO_SCHEMA
from medcf.prepare import MammoPreparer
from medcf.radiograph.header import read_header
from medcf.radiograph.pixels import read_radiograph

SAMPLE = Path(__file__).resolve().parents[2] / "bundles" / "mammo_counterfactual" / "sample_data"
NULL = parse_intervention(MAMMO_SCHEMA, "do()")


def sample_mammograms() -> list[tuple[str, Path]]:
    truth = pd.read_csv(SAMPLE / "phantom_truth.csv", keep_default_na=False)
    shown = truth[truth["presentation"] == "FOR PRESENTATION"]
    return [
        (f"{r.laterality}{r.view}", SAMPLE / r.path) for r in shown.drop_duplicates(["laterality", "view"]).itertuples()
    ]


def cbis_mammograms() -> list[tuple[str, Path]]:
    return [
        (f"CBIS case {k} {view.upper()}", path) for k, case in enumerate(gen_cases()) for view, path in case.items()
    ]


@pytest.fixture(scope="module")
def writer(tmp_path_factory):
    out = tmp_path_factory.mktemp("written")
    return CounterfactualWriter(out, Pseudonyms(b"k" * 32), settings_id="test")


@pytest.mark.parametrize(("name", "path"), sample_mammograms() + cbis_mammograms(), ids=lambda v: str(v).split("/")[-1])
def test_the_written_breast_faces_the_sources_side_and_its_tags_agree(
    writer, name, path, chest_wall_right, dciodvfy_errors
):
    outcome = MammoPreparer((64, 64)).prepare(str(path))
    assert outcome.status == "ok", outcome.reason
    item = SourceImage(f"img-{abs(hash(name)):x}", name, outcome.header, outcome.geometry)
    display = (outcome.array[0] + 1) / 2
    (written,) = writer.write(item, display, [Drawn(NULL, display, "medcf do()")]).files
    output = writer.output_dir / written["dicom"]
    counterfactual, header = read_radiograph(output)
    source_image, source_header = read_radiograph(path)
    source_right = chest_wall_right(source_image)
    assert chest_wall_right(counterfactual) == source_right, f"{name}: mirrored against its source"
    assert outcome.geometry.mirrored == source_right, "preparation turned every chest wall to the left"
    ds = pydicom.dcmread(output)
    assert ds.ImageLaterality == source_header.laterality and "Laterality" not in ds
    assert ds.PatientOrientation[0] == ("P" if source_right else "A"), "the row direction points away from the wall"
    if source_header.spacing_mm is not None:
        scale = outcome.geometry.scale
        expected = [source_header.spacing_mm[0] * scale[0], source_header.spacing_mm[1] * scale[1]]
        assert [float(v) for v in ds.get(source_header.spacing_source)] == pytest.approx(expected, rel=1e-5)
    assert dciodvfy_errors(output) == []
    assert read_header(output).laterality == source_header.laterality
