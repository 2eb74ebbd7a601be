"""Classifier bias audit with counterfactuals."""
