"""`python -m monai.bundle run --config_file bundles/cxr_counterfactual/configs/inference.yaml --steps 5`,
every other setting the default (see conftest.py for what is checked)."""


def test_the_inference_command_makes_tracked_counterfactuals(tmp_path, inference_command_check):
    inference_command_check(tmp_path, "cxr_counterfactual")
