"""Training the counterfactual denoiser with MONAI's SupervisedTrainer (ignite)."""
