"""What preparation did to an image's geometry, and how writers undo it."""

import numpy as np
import pytest

from medcf.radiograph.geometry import Geometry


def test_a_mirrored_crop_is_recorded_in_source_coordinates_and_undone():
    """A crop taken from the mirrored image's left side is the source's right side."""
    geometry = Geometry.from_mirrored_crop((100, 80), (10, 90, 0, 40), (64, 32), mirrored=True)
    assert geometry.crop == (10, 90, 40, 80)
    image = np.arange(6.0).reshape(2, 3)
    assert np.array_equal(geometry.to_source_orientation(image), image[:, ::-1])
    assert np.array_equal(Geometry((4, 4), (0, 4, 0, 4), (2, 2)).to_source_orientation(image), image)


def test_output_spacing_scales_the_source_spacing_per_axis():
    geometry = Geometry((200, 100), (0, 200, 0, 100), (64, 64), spacing_mm=(0.1, 0.2), spacing_tag="PixelSpacing")
    assert geometry.scale == (200 / 64, 100 / 64)
    assert geometry.output_spacing_mm == pytest.approx((0.1 * 200 / 64, 0.2 * 100 / 64))
    assert Geometry((10, 10), (0, 10, 0, 10), (5, 5)).output_spacing_mm is None
    record = geometry.to_record()
    assert record["geometry_crop"] == "0,200,0,100" and record["geometry_mirrored"] is False


def test_a_crop_outside_the_source_is_refused():
    with pytest.raises(ValueError, match="does not lie inside"):
        Geometry((10, 10), (0, 11, 0, 10), (5, 5))
