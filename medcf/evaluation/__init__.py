"""Measuring trained models and counterfactuals."""
