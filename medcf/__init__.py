"""medcf: counterfactual chest X-rays and mammograms with Decoupled Classifier-Free Guidance, on MONAI."""

__version__ = "0.1.0"
