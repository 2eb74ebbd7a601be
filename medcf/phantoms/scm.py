"""Structural causal models that render radiographs: the machinery shared by the chest and breast phantoms.

A phantom subject is its exogenous noise U plus the attribute values the structural equations give for it:

* attribute noise ``u_<attribute>`` in (0, 1): the input of that attribute's structural equation. Roots
  are pure functions of their own noise; a child (e.g. disease) reads its parents AND its own noise.
* image factors (anatomy, positioning, exposure, texture) in (0, 1), plus integer texture seeds: the
  rendering's exogenous inputs. No attribute reads them, and they read no attribute.

Population associations between attributes that have no causal edge (e.g. race and breast density) are
made with correlated attribute noise (a Gaussian copula over ``u_*``): hidden confounding, never a causal
edge. So the declared graph is exactly what interventions see: ``do(race)`` with U held fixed changes race
and nothing else, although race and density are associated in the population.

A counterfactual holds U fixed, sets the intervened attributes, recomputes their descendants from their
structural equations (in topological order) and renders again: :meth:`Phantom.true_counterfactual`.
"""

from __future__ import annotations

import dataclasses
import json
import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from scipy.special import ndtr, ndtri
from scipy.stats import truncnorm

from medcf.core.attributes import AttributeSchema, AttributeValue, SchemaError

FactorLevel = Literal["patient", "study", "image"]
_EPS = 1e-6


@dataclass(frozen=True)
class Factor:
    """One exogenous image factor: uniform on (0, 1), mapped to a physical range by the renderer.

    Attributes:
        name: noise key of the factor in :attr:`Subject.noise`.
        level: "patient", "study" or "image": the level at which :meth:`Phantom.follow_up` draws it anew.
        doc: what the factor controls in the rendering.
    """

    name: str
    level: FactorLevel
    doc: str


@dataclass(frozen=True)
class Subject:
    """A phantom subject: exogenous noise, texture seeds and the attribute values it has.

    Attributes:
        noise: exogenous noise in (0, 1): attribute noise ``u_<attribute>`` and the image factors.
        seeds: integer texture seeds by name (see :attr:`Phantom.seed_names`).
        attributes: attribute values the structural equations give for ``noise`` (or set by interventions).
    """

    noise: Mapping[str, float]
    seeds: Mapping[str, int]
    attributes: Mapping[str, AttributeValue]

    def replace(self, **changes: Any) -> Subject:
        """A copy with some fields replaced (``dataclasses.replace``).

        Args:
            changes: new values by field name (``noise``, ``seeds``, ``attributes``).

        Returns:
            The new subject.
        """
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class Population:
    """Population settings common to every phantom.

    Args:
        noise_correlations: ``{"a~b": rho}`` correlations between the latent normals of attribute noises
            ``u_a`` and ``u_b`` (a Gaussian copula). They make attributes associated in the population
            without a causal edge between them.
    """

    noise_correlations: Mapping[str, float] = field(default_factory=dict)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], source: str = "population") -> Population:
        """Build from a mapping (e.g. parsed JSON), rejecting unknown fields with a clear message.

        Args:
            values: field values by field name; lists are converted to tuples.
            source: where the values come from, used as prefix of error messages (default "population").

        Returns:
            The population settings.

        Raises:
            SchemaError: when ``values`` has unknown fields or the constructor rejects them.
        """
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise SchemaError(f"{source}: unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        converted = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
        try:
            return cls(**converted)
        except TypeError as error:
            raise SchemaError(f"{source}: {error}") from None

    @classmethod
    def from_json(cls, path: str | Path) -> Population:
        """Read population settings from a JSON file holding one object (see :meth:`from_mapping`).

        Args:
            path: JSON file to read.

        Returns:
            The population settings.

        Raises:
            SchemaError: when the file cannot be read or parsed, does not hold a JSON object, or has bad fields.
        """
        try:
            values = json.loads(Path(path).read_text())
        except (OSError, ValueError) as error:  # ValueError: bad JSON or undecodable bytes
            raise SchemaError(f"{path}: cannot read population settings ({error})") from None
        if not isinstance(values, dict):
            raise SchemaError(f"{path}: population settings must be a JSON object")
        return cls.from_mapping(values, source=str(path))

    def to_dict(self) -> dict[str, Any]:
        """The settings as plain values, e.g. for writing JSON.

        Returns:
            A dict of the fields (``dataclasses.asdict``).
        """
        return dataclasses.asdict(self)


def check_probabilities(name: str, probabilities: tuple[float, ...], count: int) -> None:
    """Raise unless ``probabilities`` has ``count`` non-negative entries summing to 1.

    Args:
        name: setting name, used in error messages.
        probabilities: the probabilities to check.
        count: expected number of entries.

    Raises:
        SchemaError: when the count is wrong, an entry is negative or not finite, or the sum is not 1 (within 1e-6).
    """
    if len(probabilities) != count:
        raise SchemaError(f"{name}: expected {count} probabilities, got {len(probabilities)}")
    if not all(math.isfinite(p) and p >= 0 for p in probabilities) or abs(sum(probabilities) - 1.0) > 1e-6:
        raise SchemaError(f"{name}: probabilities must be >= 0 and sum to 1, got {probabilities}")


def check_fraction(name: str, value: float) -> None:
    """Raise unless ``value`` lies in [0, 1].

    Args:
        name: setting name, used in the error message.
        value: the value to check.

    Raises:
        SchemaError: when ``value`` is outside [0, 1].
    """
    if not 0.0 <= value <= 1.0:
        raise SchemaError(f"{name}: {value!r} must lie in [0, 1]")


def check_age_distribution(mean: float, sd: float, bounds: tuple[float, float]) -> None:
    """Raise unless ``mean`` lies within ``bounds`` and ``sd`` is positive and finite.

    Args:
        mean: mean age in years.
        sd: standard deviation of age in years.
        bounds: ``(low, high)`` range of ages.

    Raises:
        SchemaError: when ``mean`` is outside ``bounds`` or ``sd`` is not a positive finite number.
    """
    if not bounds[0] <= mean <= bounds[1]:
        raise SchemaError(f"age_mean: {mean!r} must lie in [{bounds[0]:g}, {bounds[1]:g}]")
    if not 0 < sd < math.inf:
        raise SchemaError(f"age_sd: {sd!r} must be a positive finite number")


def age_from_noise(u: float, mean: float, sd: float, bounds: tuple[float, float]) -> float:
    """Age structural equation: the ``u`` quantile of a normal(mean, sd) truncated to ``bounds``.

    Args:
        u: the age noise, in (0, 1).
        mean: mean of the normal before truncation.
        sd: standard deviation of the normal before truncation.
        bounds: ``(low, high)`` truncation range.

    Returns:
        The age.
    """
    low, high = ((b - mean) / sd for b in bounds)
    return float(truncnorm.ppf(u, low, high, loc=mean, scale=sd))


def categorical_from_noise(u: float, values: tuple[str, ...], probabilities: tuple[float, ...]) -> str:
    """Inverse-CDF draw: the value whose cumulative-probability interval holds ``u``.

    Args:
        u: the attribute noise, in (0, 1).
        values: the categories.
        probabilities: probability of each of ``values``, in the same order.

    Returns:
        One of ``values`` (the last one if rounding leaves ``u`` past the cumulative sum).
    """
    index = int(np.searchsorted(np.cumsum(probabilities), u, side="right"))
    return values[min(index, len(values) - 1)]


class Phantom(ABC):
    """A structural causal model over :attr:`schema` with a renderer.

    Subclasses define the schema, the image factors, the population and the structural equations
    (:meth:`mechanism`), and render a subject to a display image in [0, 1] (bright = attenuating).

    Args:
        population: population settings; its ``noise_correlations`` set the copula of the attribute noise.

    Raises:
        SchemaError: when ``noise_correlations`` names unknown or equal attributes, gives a pair twice, has a
            value outside (-1, 1), or is not positive definite as a whole.
    """

    schema: AttributeSchema
    factors: tuple[Factor, ...]
    seed_names: tuple[str, ...] = ("anatomy", "noise")
    #: attributes whose noise is drawn anew for each study of a patient (the rest are the patient's)
    study_level_attributes: tuple[str, ...] = ()

    def __init__(self, population: Population) -> None:
        self.population = population
        self._noise_names = tuple(f"u_{name}" for name in self.schema.names)
        self._correlation = self._copula_correlation(population.noise_correlations)
        self._cholesky = np.linalg.cholesky(self._correlation)

    # -- structural equations -------------------------------------------------------------------------
    @abstractmethod
    def mechanism(self, name: str, noise: Mapping[str, float], parents: Mapping[str, AttributeValue]) -> AttributeValue:
        """Structural equation of attribute ``name`` from its own noise ``u_name`` and its parents.

        Args:
            name: the attribute to compute.
            noise: the subject's exogenous noise (holds ``u_name``).
            parents: values of the attribute's parents in the schema.

        Returns:
            The attribute's value.
        """

    @abstractmethod
    def render(self, subject: Subject, size: int) -> np.ndarray:
        """Render ``subject`` as a ``size`` x ``size`` float32 display image in [0, 1].

        Args:
            subject: the subject to render.
            size: image side in pixels.

        Returns:
            The display image.
        """

    # -- sampling -------------------------------------------------------------------------------------
    def _copula_correlation(self, correlations: Mapping[str, float]) -> np.ndarray:
        names = self.schema.names
        matrix = np.eye(len(names))
        for key, rho in correlations.items():
            pair = key.split("~")
            if len(pair) != 2 or not all(p in self.schema for p in pair) or pair[0] == pair[1]:
                raise SchemaError(
                    f"noise_correlations: key {key!r} must be 'a~b' with two different attributes of {', '.join(names)}"
                )
            if not -1.0 < float(rho) < 1.0:  # also rejects NaN
                raise SchemaError(f"noise_correlations[{key!r}]: {rho!r} must lie strictly between -1 and 1")
            i, j = names.index(pair[0]), names.index(pair[1])
            if matrix[i, j] != 0.0:
                raise SchemaError(f"noise_correlations: the pair {key!r} is given twice")
            matrix[i, j] = matrix[j, i] = float(rho)
        try:
            np.linalg.cholesky(matrix)
        except np.linalg.LinAlgError:
            raise SchemaError(
                "noise_correlations: the correlations are not jointly possible (the matrix is not positive definite)"
            ) from None
        return matrix

    def sample(self, n: int, rng: np.random.Generator, do: Mapping[str, AttributeValue] | None = None) -> list[Subject]:
        """Draw ``n`` subjects from the population; ``do`` intervenes on attributes at sampling time.

        Args:
            n: number of subjects.
            rng: random generator for the noise and the texture seeds.
            do: attribute values to set on every subject (default: none); they are validated by the schema.

        Returns:
            The subjects.
        """
        interventions = self.schema.validate(do or {})
        latent = rng.standard_normal((n, len(self._noise_names))) @ self._cholesky.T
        attribute_noise = np.clip(ndtr(latent), _EPS, 1 - _EPS)
        image_noise = rng.uniform(_EPS, 1 - _EPS, size=(n, len(self.factors)))
        seeds = rng.integers(0, 2**31 - 1, size=(n, len(self.seed_names)))
        subjects = []
        for k in range(n):
            noise = dict(zip(self._noise_names, attribute_noise[k].tolist(), strict=True))
            noise.update(zip((f.name for f in self.factors), image_noise[k].tolist(), strict=True))
            attributes = self.solve(noise, interventions)
            subjects.append(Subject(noise, dict(zip(self.seed_names, seeds[k].tolist(), strict=True)), attributes))
        return subjects

    def solve(
        self,
        noise: Mapping[str, float],
        do: Mapping[str, AttributeValue] | None = None,
        keep: Mapping[str, AttributeValue] | None = None,
    ) -> dict[str, AttributeValue]:
        """Attribute values for ``noise``: intervened ones from ``do``, kept ones from ``keep``, others from
        their structural equations, in topological order.

        Args:
            noise: exogenous noise of the subject.
            do: intervened attribute values (default: none); they take precedence over ``keep``.
            keep: attribute values to keep as they are (default: none).

        Returns:
            Every attribute's value, by name.
        """
        do, keep = do or {}, keep or {}
        values: dict[str, AttributeValue] = {}
        for name in self.schema.topological_order():
            if name in do:
                values[name] = do[name]
            elif name in keep:
                values[name] = keep[name]
            else:
                parents = {p: values[p] for p in self.schema[name].parents}
                values[name] = self.mechanism(name, noise, parents)
        return values

    def follow_up(
        self,
        subject: Subject,
        rng: np.random.Generator,
        levels: tuple[FactorLevel, ...],
        do: Mapping[str, AttributeValue] | None = None,
    ) -> Subject:
        """Another image of the same patient: the image factors of ``levels`` and the ``noise`` seed are drawn
        anew, and, when "study" is in ``levels``, the noise of :attr:`study_level_attributes` too.
        Patient anatomy is kept; attributes change only under ``do`` or through redrawn noise.

        Args:
            subject: the patient's earlier image.
            rng: random generator for the redrawn noise and the new ``noise`` seed.
            levels: factor levels ("patient", "study", "image") whose image factors are drawn anew.
            do: attribute values to set on the new image (default: none).

        Returns:
            The new subject.
        """
        noise = dict(subject.noise)
        for factor in self.factors:
            if factor.level in levels:
                noise[factor.name] = float(rng.uniform(_EPS, 1 - _EPS))
        redrawn = self.study_level_attributes if "study" in levels else ()
        noise.update(self._redraw_attribute_noise(noise, redrawn, rng))
        seeds = {**subject.seeds, "noise": int(rng.integers(0, 2**31 - 1))}
        return self._update(subject.attributes, noise, seeds, do or {}, redrawn)

    def _redraw_attribute_noise(
        self, noise: Mapping[str, float], names: tuple[str, ...], rng: np.random.Generator
    ) -> dict[str, float]:
        """New noise for attributes ``names`` drawn from the copula conditioned on every other attribute's
        noise, so that follow-up studies keep the population's associations."""
        if not names:
            return {}
        redrawn = [self.schema.names.index(n) for n in names]
        kept = [k for k in range(len(self.schema.names)) if k not in redrawn]
        latent_kept = ndtri(np.array([noise[self._noise_names[k]] for k in kept]))
        sigma = self._correlation
        gain = sigma[np.ix_(redrawn, kept)] @ np.linalg.inv(sigma[np.ix_(kept, kept)])
        covariance = sigma[np.ix_(redrawn, redrawn)] - gain @ sigma[np.ix_(kept, redrawn)]
        latent = rng.multivariate_normal(gain @ latent_kept, covariance, method="cholesky")
        values = np.clip(ndtr(latent), _EPS, 1 - _EPS)
        return {self._noise_names[k]: float(v) for k, v in zip(redrawn, values, strict=True)}

    # -- counterfactuals ------------------------------------------------------------------------------
    def counterfactual(self, subject: Subject, do: Mapping[str, AttributeValue]) -> Subject:
        """The same subject (same U) under ``do``: descendants of intervened attributes are recomputed,
        every other attribute keeps its factual value.

        Args:
            subject: the factual subject.
            do: intervened attribute values; they are validated by the schema.

        Returns:
            The counterfactual subject, with the same noise and seeds.
        """
        return self._update(subject.attributes, subject.noise, subject.seeds, do)

    def _update(
        self,
        attributes: Mapping[str, AttributeValue],
        noise: Mapping[str, float],
        seeds: Mapping[str, int],
        do: Mapping[str, AttributeValue],
        redrawn: tuple[str, ...] = (),
    ) -> Subject:
        """Solve again: intervened attributes take their ``do`` value; attributes whose noise was redrawn and
        all descendants of those and of the intervened ones follow their equations; the rest are kept."""
        interventions = self.schema.validate(do)
        changed = set(interventions) | set(redrawn)
        recomputed = (self.schema.descendants(changed) | set(redrawn)) - set(interventions)
        keep = {k: v for k, v in attributes.items() if k not in recomputed}
        return Subject(noise, seeds, self.solve(noise, interventions, keep))

    def true_counterfactual(
        self, subject: Subject, do: Mapping[str, AttributeValue], size: int
    ) -> tuple[Subject, np.ndarray]:
        """Exact counterfactual attributes AND image of ``subject`` under ``do``.

        Args:
            subject: the factual subject.
            do: intervened attribute values.
            size: image side in pixels.

        Returns:
            The counterfactual subject (see :meth:`counterfactual`) and its rendered image.
        """
        counterfactual = self.counterfactual(subject, do)
        return counterfactual, self.render(counterfactual, size)
