"""The causal graph used for counterfactual actions: which attributes an intervention changes.

Each non-root attribute gets a mechanism fitted on the training cohort; the exogenous noise of an image's
attribute is abducted from its factual value, so an intervention on a parent updates the child
consistently (``do(age=80)`` may turn "No Finding" into "Pleural Effusion"; ``do(age=<own age>)`` never
changes anything). Attributes named in the intervention itself are pinned and never recomputed.

Mechanism: a cumulative-logit (ordinal logistic) model, which is ordinary logistic regression for a binary
child: latent = beta . features(parents) + e, e ~ Logistic(0, 1); the category is the number of cut points
theta_1 < ... < theta_{C-1} below the latent. Abduction takes the noise in the middle (in probability) of the
interval that reproduces the factual category, so counterfactuals are deterministic and monotone.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.optimize import minimize
from scipy.special import expit, logit

from medcf.core.attributes import AttributeSchema, AttributeValue, SchemaError
from medcf.core.manifest_labels import allowed_rows, read_manifest
from medcf.runtime.files import write_text_atomic


@dataclass
class OrdinalMechanism:
    """P(child <= category k | parents) = sigmoid(theta_k - beta . features(parents)).

    Attributes:
        child: the categorical attribute this mechanism sets.
        categories: the child's values, in coding order.
        parents: names of the attributes it reads.
        feature_names: names for the feature columns (nothing in this module fills or saves it).
        centre: mean of each continuous parent on the cohort, set by :meth:`fit`.
        scale: standard deviation of each continuous parent on the cohort (1 where it is 0), set by :meth:`fit`.
        beta: weight of each feature, set by :meth:`fit`.
        thresholds: the C - 1 increasing cut points theta, set by :meth:`fit`.
    """

    child: str
    categories: tuple[str, ...]
    parents: tuple[str, ...]
    feature_names: tuple[str, ...] = ()
    centre: dict[str, float] = field(default_factory=dict)
    scale: dict[str, float] = field(default_factory=dict)
    beta: np.ndarray = field(default_factory=lambda: np.zeros(0))
    thresholds: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def features(self, schema: AttributeSchema, values: Mapping[str, AttributeValue]) -> np.ndarray:
        """Standardised continuous parents and one-hot categorical parents (first category dropped).

        Args:
            schema: the attribute schema the parents belong to.
            values: attribute name -> value; must hold every parent.

        Returns:
            The float64 feature vector, parents in ``parents`` order.
        """
        row = []
        for parent in self.parents:
            attribute = schema[parent]
            if attribute.kind == "continuous":
                row.append((float(values[parent]) - self.centre[parent]) / self.scale[parent])
            else:
                row.extend(float(str(values[parent]) == v) for v in attribute.values[1:])
        return np.asarray(row, dtype=np.float64)

    def fit(self, schema: AttributeSchema, table: pd.DataFrame) -> OrdinalMechanism:
        """Maximum-likelihood fit on the cohort rows (one per image).

        Sets ``centre`` and ``scale`` from the cohort, then ``beta`` and ``thresholds`` by L-BFGS-B.

        Args:
            schema: the attribute schema the child and parents belong to.
            table: the cohort, one column per attribute; rows must have the child and every parent.

        Returns:
            This mechanism, fitted.

        Raises:
            SchemaError: if the child column has values outside ``categories``.
        """
        for parent in self.parents:
            if schema[parent].kind == "continuous":
                values = table[parent].astype(float)
                self.centre[parent], self.scale[parent] = float(values.mean()), float(values.std() or 1.0)
        design = np.stack([self.features(schema, row) for row in table.to_dict("records")])
        target = table[self.child].map({c: k for k, c in enumerate(self.categories)}).to_numpy()
        if np.isnan(target.astype(float)).any():
            raise SchemaError(f"cohort: {self.child} has values outside {self.categories}")
        counts = np.bincount(target.astype(int), minlength=len(self.categories))
        cumulative = np.clip(np.cumsum(counts)[:-1] / counts.sum(), 1e-3, 1 - 1e-3)
        start = np.concatenate([np.zeros(design.shape[1]), logit(cumulative)])

        def negative_log_likelihood(parameters: np.ndarray) -> float:
            beta, thresholds = parameters[: design.shape[1]], np.sort(parameters[design.shape[1] :])
            latent = design @ beta
            upper = np.append(expit(thresholds[None, :] - latent[:, None]), np.ones((len(latent), 1)), axis=1)
            lower = np.insert(upper[:, :-1], 0, 0.0, axis=1)
            probability = (upper - lower)[np.arange(len(target)), target.astype(int)]
            return -float(np.log(np.clip(probability, 1e-12, None)).sum())

        result = minimize(negative_log_likelihood, start, method="L-BFGS-B")
        self.beta = result.x[: design.shape[1]]
        self.thresholds = np.sort(result.x[design.shape[1] :])
        return self

    def cumulative(self, schema: AttributeSchema, values: Mapping[str, AttributeValue]) -> np.ndarray:
        """P(child <= k) for k = 0..C-2 given the parents.

        Args:
            schema: the attribute schema the parents belong to.
            values: attribute name -> value; must hold every parent.

        Returns:
            The C - 1 cumulative probabilities.
        """
        return expit(self.thresholds - self.features(schema, values) @ self.beta)

    def abduct(self, schema: AttributeSchema, factual: Mapping[str, AttributeValue]) -> float:
        """The exogenous noise (as a probability level) in the middle of the factual category's interval.

        Args:
            schema: the attribute schema the parents belong to.
            factual: the image's factual attribute values; must hold the child and every parent.

        Returns:
            The noise level, in (0, 1).
        """
        bounds = np.concatenate([[0.0], self.cumulative(schema, factual), [1.0]])
        k = self.categories.index(str(factual[self.child]))
        return float((bounds[k] + bounds[k + 1]) / 2)

    def predict(self, schema: AttributeSchema, values: Mapping[str, AttributeValue], noise: float) -> str:
        """The category whose interval under these parents contains the noise level.

        Args:
            schema: the attribute schema the parents belong to.
            values: attribute name -> value; must hold every parent.
            noise: the abducted noise level from :meth:`abduct`.

        Returns:
            The child's category.
        """
        return self.categories[int(np.searchsorted(self.cumulative(schema, values), noise, side="right"))]

    def to_config(self) -> dict[str, Any]:
        """Plain data (for JSON); :meth:`from_config` reads it back.

        Returns:
            ``child``, ``categories``, ``parents``, ``centre``, ``scale``, ``beta`` and ``thresholds`` as plain lists,
            dicts and strings.
        """
        return {
            "child": self.child,
            "categories": list(self.categories),
            "parents": list(self.parents),
            "centre": self.centre,
            "scale": self.scale,
            "beta": self.beta.tolist(),
            "thresholds": self.thresholds.tolist(),
        }

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> OrdinalMechanism:
        """Rebuild a fitted mechanism from :meth:`to_config` data.

        Args:
            config: a mapping with the keys that :meth:`to_config` writes.

        Returns:
            The mechanism.
        """
        return cls(
            child=config["child"],
            categories=tuple(config["categories"]),
            parents=tuple(config["parents"]),
            centre=dict(config["centre"]),
            scale=dict(config["scale"]),
            beta=np.asarray(config["beta"]),
            thresholds=np.asarray(config["thresholds"]),
        )


@dataclass
class CausalGraph:
    """The attribute schema's DAG with a fitted mechanism for every attribute that has parents.

    Attributes:
        schema: the attributes and their parents.
        mechanisms: child attribute name -> its fitted mechanism.
    """

    schema: AttributeSchema
    mechanisms: dict[str, OrdinalMechanism]

    @classmethod
    def fit(cls, schema: AttributeSchema, cohort: pd.DataFrame) -> CausalGraph:
        """Fit every non-root attribute's mechanism on a cohort table (columns named as the attributes).

        Each mechanism is fitted on the rows that have its child and all its parents.

        Args:
            schema: the attributes and their parents.
            cohort: one row per image.

        Returns:
            The fitted graph.

        Raises:
            SchemaError: if an attribute with parents is not categorical, the cohort lacks a needed column, or a
                child column has values outside its categories.
        """
        mechanisms = {}
        for attribute in schema.attributes:
            if not attribute.parents:
                continue
            if attribute.kind != "categorical":
                raise SchemaError(f"{attribute.name}: only categorical children have a fitted mechanism here")
            missing = [c for c in (attribute.name, *attribute.parents) if c not in cohort.columns]
            if missing:
                raise SchemaError(f"cohort: no column(s) {', '.join(missing)} to fit {attribute.name}")
            rows = cohort.dropna(subset=[attribute.name, *attribute.parents])
            mechanisms[attribute.name] = OrdinalMechanism(attribute.name, attribute.values, attribute.parents).fit(
                schema, rows
            )
        return cls(schema, mechanisms)

    @classmethod
    def fit_manifest(cls, schema: AttributeSchema, manifest: str | Path, split: str | None = "train") -> CausalGraph:
        """Fit on the prepared images of a preparation manifest (the training cohort's attributes).

        Args:
            schema: the attributes and their parents.
            manifest: the manifest CSV; only rows with ``status`` ``ok`` and labels ``schema`` allows are used.
            split: keep only the rows of this split (when the manifest has a ``split`` column); None keeps all.

        Returns:
            The fitted graph.

        Raises:
            SchemaError: as :meth:`fit`.
        """
        return cls.fit(schema, allowed_rows(read_manifest(manifest, split), schema, manifest))

    def affected(self, intervened: Iterable[str]) -> set[str]:
        """Intervened attributes and their causal descendants: the DCFG affected group.

        Args:
            intervened: names of the attributes the intervention sets.

        Returns:
            Those names and every attribute downstream of them.
        """
        intervened = set(intervened)
        return intervened | self.schema.descendants(intervened)

    def counterfactual(
        self, factual: Mapping[str, AttributeValue], intervention: Mapping[str, AttributeValue]
    ) -> dict[str, AttributeValue]:
        """Counterfactual attributes: intervened values set, their descendants recomputed with abducted
        noise (unless pinned by the intervention), everything else factual.

        Args:
            factual: the image's factual attribute values.
            intervention: attribute name -> the value it is set to (text or number).

        Returns:
            A new mapping: attribute name -> counterfactual value.

        Raises:
            SchemaError: if the intervention names an unknown attribute or a value that is not allowed.
        """
        values = dict(factual)
        values.update(self.schema.validate(intervention))
        recompute = self.schema.descendants(intervention) - set(intervention)
        for name in self.schema.topological_order():
            if name in recompute:
                mechanism = self.mechanisms[name]
                values[name] = mechanism.predict(self.schema, values, mechanism.abduct(self.schema, factual))
        return values

    def to_config(self) -> dict[str, Any]:
        """Plain data (for JSON); :meth:`from_config` reads it back.

        Returns:
            ``{"mechanisms": [...]}``, one :meth:`OrdinalMechanism.to_config` mapping per mechanism.
        """
        return {"mechanisms": [m.to_config() for m in self.mechanisms.values()]}

    def save(self, path: str | Path) -> None:
        """Write the fitted mechanisms as JSON (atomically).

        Args:
            path: the JSON file to write; :meth:`load` reads it back.
        """
        write_text_atomic(path, json.dumps(self.to_config(), indent=2) + "\n")

    @classmethod
    def load(cls, schema: AttributeSchema, path: str | Path) -> CausalGraph:
        """Read a graph written by :meth:`save`.

        Args:
            schema: the attributes and their parents.
            path: the JSON file.

        Returns:
            The fitted graph.

        Raises:
            SchemaError: as :meth:`from_config`.
        """
        return cls.from_config(schema, json.loads(Path(path).read_text()))

    @classmethod
    def from_config(cls, schema: AttributeSchema, config: Mapping[str, Any]) -> CausalGraph:
        """Rebuild a fitted graph from :meth:`to_config` data.

        Args:
            schema: the attributes and their parents.
            config: a mapping with a ``mechanisms`` list, as :meth:`to_config` writes.

        Returns:
            The fitted graph.

        Raises:
            SchemaError: if there is not exactly one mechanism for each attribute of the schema that has parents.
        """
        mechanisms = {m["child"]: OrdinalMechanism.from_config(m) for m in config.get("mechanisms", [])}
        needed = {a.name for a in schema.attributes if a.parents}
        if set(mechanisms) != needed:
            raise SchemaError(
                f"causal graph: mechanisms for {sorted(mechanisms)}, but the schema's non-root "
                f"attributes are {sorted(needed)}"
            )
        return cls(schema, mechanisms)
