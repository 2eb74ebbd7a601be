"""`python -m monai.bundle run --config_file bundles/cxr_counterfactual/configs/inference.yaml`, no arguments
(see conftest.py for what is checked)."""


def test_no_argument_command_makes_tracked_counterfactuals(tmp_path, no_argument_run_check):
    no_argument_run_check(tmp_path, "cxr_counterfactual")
