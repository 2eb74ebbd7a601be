"""The one map between the display scale [0, 1] and the model's scale [-1, 1], on arrays and tensors."""

import numpy as np
import torch

from medcf.core.intensity import to_model_scale, to_unit_scale


def test_the_two_maps_invert_each_other_and_keep_the_dtype():
    unit = np.array([0.0, 0.25, 0.5, 1.0], dtype=np.float32)
    model = to_model_scale(unit)
    assert model.dtype == np.float32 and model.tolist() == [-1.0, -0.5, 0.0, 1.0]
    assert to_unit_scale(model).tolist() == unit.tolist()
    tensor = torch.tensor([-1.0, 0.0, 1.0], dtype=torch.float64)
    back = to_unit_scale(tensor)
    assert back.dtype == torch.float64 and back.tolist() == [0.0, 0.5, 1.0]


def test_what_strays_outside_is_clipped_unless_asked_to_keep_it():
    strays = np.array([-1.5, 1.5], dtype=np.float32)
    assert to_unit_scale(strays).tolist() == [0.0, 1.0]
    assert to_unit_scale(strays, clip=False).tolist() == [-0.25, 1.25]
    assert to_unit_scale(torch.tensor([-3.0, 3.0])).tolist() == [0.0, 1.0]
