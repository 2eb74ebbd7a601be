"""The reconstruction evaluator and the manifest reader behind training."""

import numpy as np
import pandas as pd
import pytest
import torch

from medcf.core.attributes import SchemaError
from medcf.core.causal import CausalGraph
from medcf.core.diffusion import DiffusionConfig
from medcf.core.network import CounterfactualUNet, ModelConfig, save_checkpoint
from medcf.measure.reconstruction import main, reconstruction_errors
from medcf.phantoms.cxr import CXR_SCHEMA
from medcf.training.data import manifest_items

TINY = ModelConfig(channels=(32, 64), attention_levels=(False, False), num_head_channels=8, block_dim=8, hidden_dim=16)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def prepared(tmp_path):
    """A manifest of four prepared 16 x 16 images with chest attributes (two train, two test)."""
    rng = np.random.default_rng(0)
    rows = []
    for k in range(4):
        output = f"images/{k}.npy"
        (tmp_path / "images").mkdir(exist_ok=True)
        np.save(tmp_path / output, rng.uniform(-1, 1, (1, 16, 16)).astype(np.float32))
        rows.append(
            {
                "source": f"{k}.dcm",
                "status": "ok",
                "reason": "",
                "output": output,
                "age": 40.0 + k,
                "sex": "MF"[k % 2],
                "race": "White",
                "disease": "No Finding",
                "split": ["train", "test"][k // 2],
            }
        )
    rows.append({"source": "bad.dcm", "status": "rejected", "reason": "not_dicom", "output": ""})
    pd.DataFrame(rows).to_csv(tmp_path / "manifest.csv", index=False)
    return tmp_path / "manifest.csv"


def test_an_exactly_invertible_model_reconstructs_exactly(prepared):
    """A fresh model predicts zero noise (MONAI zero-initialises its output), so invert + decode is exact."""
    model = CounterfactualUNet(CXR_SCHEMA, TINY)
    items = manifest_items(prepared, CXR_SCHEMA, "test")
    images = torch.stack([torch.from_numpy(np.load(i["image"])) for i in items])
    codes = torch.stack([torch.as_tensor(i["attributes"]) for i in items])
    errors = reconstruction_errors(model, DiffusionConfig(), images, codes, steps=10)
    assert errors.shape == (2,) and errors.max() < 1e-5


def test_command_line_reports_json_and_fails_clearly(prepared, tmp_path, capsys):
    """The CLI prints the error figures; a file that is not a model gives one error line and status 2."""
    model = CounterfactualUNet(CXR_SCHEMA, TINY)
    save_checkpoint(tmp_path / "model.pt", model, DiffusionConfig().to_dict())
    assert main(["--model", str(tmp_path / "model.pt"), "--manifest", str(prepared), "--steps", "5"]) == 0
    assert '"images": 2' in capsys.readouterr().out
    model = ["--model", str(tmp_path / "model.pt"), "--manifest", str(prepared)]
    assert main([*model, "--steps", "2", "--device", "cpu"]) == 0
    assert '"device": "cpu"' in capsys.readouterr().out
    assert main([*model, "--device", "gpu"]) == 2
    assert "device: 'gpu' is not a device" in capsys.readouterr().err
    (tmp_path / "junk.pt").write_text("not a model")
    assert main(["--model", str(tmp_path / "junk.pt"), "--manifest", str(prepared)]) == 2
    assert "not a medcf checkpoint" in capsys.readouterr().err


class TestManifestItems:
    def test_rejected_rows_are_skipped_and_splits_filter(self, prepared):
        """Only ok rows of the asked split, with attribute codes in schema order."""
        items = manifest_items(prepared, CXR_SCHEMA, "train")
        assert len(items) == 2 and items[1]["attributes"].tolist() == [41.0, 1.0, 0.0, 0.0]
        assert len(manifest_items(prepared, CXR_SCHEMA)) == 4

    def test_missing_attribute_column_and_missing_values_are_named(self, prepared, tmp_path):
        """A manifest prepared without a cohort (no race) or with gaps is refused with the reason."""
        table = pd.read_csv(prepared)
        table.drop(columns="race").to_csv(tmp_path / "no_race.csv", index=False)
        with pytest.raises(SchemaError, match="no column\\(s\\) race"):
            manifest_items(tmp_path / "no_race.csv", CXR_SCHEMA)
        table.loc[0, "disease"] = None
        table.to_csv(tmp_path / "gap.csv", index=False)
        with pytest.raises(SchemaError, match="1 prepared images lack attribute values \\(first: line 2\\)"):
            manifest_items(tmp_path / "gap.csv", CXR_SCHEMA)

    def test_a_row_outside_the_models_attributes_is_left_out_with_one_warning(self, prepared, tmp_path, caplog):
        """MIMIC-CXR's age at the study can pass the model's 95: that image is left out (the file, count, line
        and reason in one warning, never its path), the others train, and the fitted graph skips it too."""
        table = pd.read_csv(prepared)
        table.loc[1, "age"] = 96
        table.loc[2, "race"] = "Other"
        table.to_csv(tmp_path / "old.csv", index=False)
        with caplog.at_level("WARNING", logger="medcf"):
            items = manifest_items(tmp_path / "old.csv", CXR_SCHEMA)
        assert len(items) == 2
        assert [r.getMessage() for r in caplog.records] == [
            f"{tmp_path / 'old.csv'}: 2 of 4 rows left out, their labels are outside the model's attributes "
            "(first, line 3: age: 96 is outside the allowed range [18, 95])"
        ]
        assert "1.dcm" not in caplog.text
        caplog.clear()
        with caplog.at_level("WARNING", logger="medcf"):
            assert len(manifest_items(tmp_path / "old.csv", CXR_SCHEMA, "test")) == 1
            CausalGraph.fit_manifest(CXR_SCHEMA, tmp_path / "old.csv")
        assert [r.getMessage().split(": ", 1)[1][:30] for r in caplog.records] == ["1 of 2 rows left out, their la"] * 2
