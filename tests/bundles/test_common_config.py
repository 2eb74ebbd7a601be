"""Every config of a bundle takes what they share from its configs/common.yaml, so training, inference, evaluation
and the audit cannot drift apart."""

from pathlib import Path

import pytest
from monai.bundle import ConfigParser

from medcf.jobs.bundles import BUNDLE_NAMES, bundle_root, common, preparer, training_manifest

CONFIGS = ("train", "train_predictors", "inference", "evaluate", "audit")


def parsed(bundle: str, config: str, *keys: str) -> list:
    parser = ConfigParser()
    parser.read_config(str(Path(bundle_root(bundle)) / "configs" / f"{config}.yaml"))
    return [parser.get_parsed_content(key) for key in keys]


@pytest.mark.parametrize("bundle", BUNDLE_NAMES)
def test_every_config_takes_the_shared_attributes_and_files(bundle):
    shared = common(bundle_root(bundle))
    for config in CONFIGS:
        (attributes,) = parsed(bundle, config, "attributes")
        assert attributes == shared["attributes"], config
    for config in ("inference", "evaluate", "audit"):
        model, graph = parsed(bundle, config, "model_path", "graph_path")
        assert (model, graph) == (shared["files"]["model"], shared["files"]["graph"]), config
        assert Path(model).is_file() and Path(graph).is_file()


@pytest.mark.parametrize("bundle", BUNDLE_NAMES)
def test_the_audit_audits_the_guidance_inference_uses(bundle):
    mode, weight, w_aff, w_inv, steps = parsed(bundle, "inference", "guidance", "w", "w_aff", "w_inv", "steps")
    audited, audited_steps = parsed(bundle, "audit", "guidance", "steps")
    assert audited == {"mode": mode, "weight": weight, "w_aff": w_aff, "w_inv": w_inv}
    assert audited_steps == steps == 50
    parser = ConfigParser()
    parser.read_config(str(Path(bundle_root(bundle)) / "configs" / "audit.yaml"))
    parser["guidance#w_aff"] = 3.0  # what --guidance#w_aff 3 does: one weight changed, the others kept
    assert parser.get_parsed_content("guidance") == {**audited, "w_aff": 3.0}


@pytest.mark.parametrize("bundle", BUNDLE_NAMES)
def test_training_and_predictors_share_one_phantom_training_set(bundle):
    keys = ("phantom_dir", "phantom_n", "image_size", "phantom_seed")
    assert parsed(bundle, "train", *keys) == parsed(bundle, "train_predictors", *keys)
    assert parsed(bundle, "train", "phantom_dir")[0] == common(bundle_root(bundle))["phantom_training_set"]["dir"]


def test_a_missing_or_malformed_common_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="common.yaml"):
        common(tmp_path)
    (tmp_path / "configs").mkdir()
    source = Path(bundle_root("cxr_counterfactual")) / "configs" / "common.yaml"
    (tmp_path / "configs" / "common.yaml").write_text(source.read_text() + "colour: blue\n")
    with pytest.raises(ValueError, match=r"unknown \['colour'\]"):
        common(tmp_path)
    text = source.read_text().replace("kind: cxr\n", "")
    (tmp_path / "configs" / "common.yaml").write_text(text)
    with pytest.raises(ValueError, match=r"missing \['kind'\]"):
        common(tmp_path)


def test_training_reads_the_given_manifest_or_names_it(tmp_path):
    manifest = tmp_path / "manifest.csv"
    with pytest.raises(FileNotFoundError, match="manifest.csv is not a file"):
        training_manifest(manifest, "cxr", tmp_path / "phantoms", 10, 32, 0)
    manifest.write_text("status\n")
    assert training_manifest(manifest, "cxr", tmp_path / "phantoms", 10, 32, 0) == str(manifest)
    assert not (tmp_path / "phantoms").exists(), "a given manifest makes no phantom set"


DICOM_CONFIGS = ("prepare", "inference", "evaluate", "audit")


@pytest.mark.parametrize("bundle", BUNDLE_NAMES)
def test_every_config_that_reads_dicom_takes_its_pixel_budget_from_common(bundle):
    """prepare, inference, evaluate and audit give their preparer common.yaml's max_pixel_bytes (128 MiB), and
    ``--max_pixel_bytes N`` (the top-level key) changes the preparer's budget."""
    budget = common(bundle_root(bundle))["max_pixel_bytes"]
    assert budget == 128 * 2**20
    for config in DICOM_CONFIGS:
        key, preparer = parsed(bundle, config, "max_pixel_bytes", "preparer")
        assert key == preparer.max_pixel_bytes == budget, config
        parser = ConfigParser()
        parser.read_config(str(Path(bundle_root(bundle)) / "configs" / f"{config}.yaml"))
        parser["max_pixel_bytes"] = 2**30  # what --max_pixel_bytes 1073741824 does
        assert parser.get_parsed_content("preparer").max_pixel_bytes == 2**30, config


@pytest.mark.parametrize("bundle", BUNDLE_NAMES)
def test_the_bundles_defaults_come_from_common_and_a_key_still_overrides_them(bundle):
    """What differs between the bundles' jobs (interventions, the audit's example, the calibration shift, balanced
    values, the preparer) is common.yaml's; the job configs name it, and ``--key value`` overrides it."""
    shared = common(bundle_root(bundle))
    (interventions,) = parsed(bundle, "inference", "interventions")
    assert interventions == parsed(bundle, "evaluate", "interventions")[0] == shared["defaults"]["interventions"]
    audited, classifier = parsed(bundle, "audit", "interventions", "classifier")
    assert audited == shared["defaults"]["audit"]["interventions"]
    assert Path(classifier).is_file() and classifier.endswith(shared["defaults"]["audit"]["classifier"])
    assert parsed(bundle, "calibrate", "shifts") == [shared["defaults"]["shifts"]]
    assert parsed(bundle, "train", "balance") == [shared["defaults"]["balance"]]
    for config in DICOM_CONFIGS:
        assert parsed(bundle, config, "preparer")[0].kind == shared["kind"], config
    parser = ConfigParser()
    parser.read_config(str(Path(bundle_root(bundle)) / "configs" / "inference.yaml"))
    parser["interventions"] = ["do(age=+10)"]  # what --interventions "['do(age=+10)']" does
    assert parser.get_parsed_content("inference").interventions == ["do(age=+10)"]


def test_one_preparer_target_serves_both_kinds_and_names_a_wrong_setting():
    assert preparer("cxr", [64, 64], 2**20).image_size == 64
    assert preparer("mammo", 64, 2**20).image_size == (64, 64)
    with pytest.raises(ValueError, match="image_size: \\[64, 32\\]; a chest X-ray is prepared square"):
        preparer("cxr", [64, 32], 2**20)
    with pytest.raises(ValueError, match="square_crop: mammograms keep their aspect ratio"):
        preparer("mammo", 64, 2**20, square_crop=True)
    with pytest.raises(ValueError, match="kind: 'knee'"):
        preparer("knee", 64, 2**20)
