"""Mammogram phantom: a structural causal model over age, race, breast density, view and a skin marker that
renders 2D full-field mammograms (CC and MLO).

Causal graph: ``age -> density``; ``race``, ``view`` and ``marker`` are roots. Laterality is not a model
attribute (preparation flips every breast to one side); the DICOM writer flips right breasts.

Structural equations (U_* uniform noise, correlated through the population's copula):
    age     = truncated-normal quantile(U_age) on [30, 95]
    race    = inverse-CDF(U_race) over White, Black, Asian
    density = BI-RADS category of  Phi^-1(U_density) + density_shift_per_decade * (age - 57) / 10,
              cut at the thresholds that give ``density_probabilities`` at age 57
    view    = MLO if U_view < mlo_fraction else CC
    marker  = circle if U_marker < marker_fraction else none

Image mechanisms:
    density fibroglandular tissue fraction of the breast (A ~8-20 %, B 20-40 %, C 40-62 %, D 62-85 %)
            and its texture: dense tissue is brighter and hides the fat lobules and ligaments.
    age     breast arterial calcification: vessels gain bright, beaded calcified walls from age 50 on,
            more with age (directly, besides acting on density).
    view    MLO shows the pectoral muscle as a bright band along the upper chest wall and the axillary
            tail; CC shows an ellipse against the chest wall and no muscle.
    marker  circle: a radio-opaque ring (skin marker) lying on the breast.
    race    NO image mechanism. Race is associated with density in the population through correlated
            noise only, so a faithful do(race) leaves the image exactly unchanged: a clean test of
            spurious change.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage
from scipy.special import expit, ndtri

from medcf.core.attributes import Attribute, AttributeSchema, AttributeValue
from medcf.phantoms.scm import (
    Factor,
    Phantom,
    Population,
    Subject,
    age_from_noise,
    categorical_from_noise,
    check_age_distribution,
    check_fraction,
    check_probabilities,
)
from medcf.phantoms.textures import blur, grid, lerp, power_law_noise, ridges, smoothstep, unsharp

AGE_RANGE = (30.0, 95.0)
RACES = ("White", "Black", "Asian")
DENSITIES = ("A", "B", "C", "D")
VIEWS = ("CC", "MLO")
MARKERS = ("none", "circle")
#: fibroglandular fraction interval of each BI-RADS density category
DENSITY_FRACTIONS = {"A": (0.08, 0.2), "B": (0.2, 0.4), "C": (0.4, 0.62), "D": (0.62, 0.85)}

MAMMO_SCHEMA = AttributeSchema(
    (
        Attribute("age", "continuous", low=AGE_RANGE[0], high=AGE_RANGE[1], unit="years"),
        Attribute("race", "categorical", values=RACES),
        Attribute("density", "categorical", values=DENSITIES, parents=("age",)),
        Attribute("view", "categorical", values=VIEWS),
        Attribute("marker", "categorical", values=MARKERS),
    )
)

MAMMO_FACTORS = (
    Factor("breast_size", "patient", "breast extent from the chest wall"),
    Factor("breast_height", "patient", "breast extent along the chest wall"),
    Factor("breast_shape", "patient", "outline exponent (rounder or more conical)"),
    Factor("tissue_centre", "patient", "vertical position of the fibroglandular cone"),
    Factor("tissue_fraction", "study", "fibroglandular fraction within the density category's interval"),
    Factor("skin_fat", "patient", "thickness of the subcutaneous fat layer"),
    Factor("vessel_course", "patient", "course of the main breast arteries"),
    Factor("compression", "study", "compressed thickness: overall attenuation"),
    Factor("position_y", "study", "vertical positioning offset"),
    Factor("pectoral_width", "study", "width of the pectoral muscle at the top (MLO)"),
    Factor("pectoral_length", "study", "length of the pectoral muscle along the chest wall (MLO)"),
    Factor("exposure", "study", "exposure"),
    Factor("contrast", "study", "display contrast (gamma)"),
    Factor("dose", "study", "quantum noise level"),
    Factor("marker_position", "image", "where on the breast a marker lies"),
)


@dataclass(frozen=True)
class MammoPopulation(Population):
    """Population of the breast phantom. Defaults associate race and the circle marker with density
    through correlated noise (no causal edge), so amplification of density is observable.

    Args:
        race_probabilities: probabilities of White, Black and Asian; non-negative, summing to 1.
        age_mean: mean of the age normal before truncation to [30, 95]; must lie in that range.
        age_sd: standard deviation of the age normal, positive and finite.
        density_probabilities: probabilities of BI-RADS density A, B, C and D at age 57; non-negative,
            summing to 1.
        density_shift_per_decade: shift of the latent density per decade of age past 57 (negative: breasts
            get less dense with age).
        mlo_fraction: probability of the MLO view, in [0, 1].
        marker_fraction: probability of a circle skin marker, in [0, 1].
        noise_correlations: ``{"a~b": rho}`` correlations of the attribute noises (see :class:`Population`).

    Raises:
        SchemaError: when a probability tuple, fraction or the age distribution is invalid.
    """

    race_probabilities: tuple[float, float, float] = (0.45, 0.42, 0.13)
    age_mean: float = 58.0
    age_sd: float = 11.0
    density_probabilities: tuple[float, float, float, float] = (0.1, 0.4, 0.4, 0.1)
    density_shift_per_decade: float = -0.35
    mlo_fraction: float = 0.5
    marker_fraction: float = 0.25
    noise_correlations: Mapping[str, float] = field(
        default_factory=lambda: {"race~density": 0.3, "marker~density": -0.35}
    )

    def __post_init__(self) -> None:
        check_probabilities("race_probabilities", tuple(self.race_probabilities), len(RACES))
        check_probabilities("density_probabilities", tuple(self.density_probabilities), len(DENSITIES))
        check_fraction("mlo_fraction", self.mlo_fraction)
        check_fraction("marker_fraction", self.marker_fraction)
        check_age_distribution(self.age_mean, self.age_sd, AGE_RANGE)


class MammogramPhantom(Phantom):
    """Structural causal model of 2D mammograms (see the module docstring for the equations).

    Args:
        population: population settings (default: ``MammoPopulation()``).
    """

    schema = MAMMO_SCHEMA
    factors = MAMMO_FACTORS
    study_level_attributes = ("density", "marker")

    def __init__(self, population: MammoPopulation | None = None) -> None:
        super().__init__(population or MammoPopulation())
        pop: MammoPopulation = self.population  # type: ignore[assignment]
        self._density_cuts = ndtri(np.cumsum(pop.density_probabilities)[:-1])

    # -- structural equations -------------------------------------------------------------------------
    def mechanism(self, name: str, noise: Mapping[str, float], parents: Mapping[str, AttributeValue]) -> AttributeValue:
        """Structural equation of ``age``, ``race``, ``density``, ``view`` or ``marker`` (see the module docstring).

        Args:
            name: the attribute to compute.
            noise: the subject's exogenous noise (holds ``u_name``).
            parents: values of the attribute's parents (``age`` for ``density``).

        Returns:
            The attribute's value.

        Raises:
            KeyError: when ``name`` is not an attribute of the schema.
        """
        pop: MammoPopulation = self.population  # type: ignore[assignment]
        u = noise[f"u_{name}"]
        if name == "age":
            return age_from_noise(u, pop.age_mean, pop.age_sd, AGE_RANGE)
        if name == "race":
            return categorical_from_noise(u, RACES, tuple(pop.race_probabilities))
        if name == "density":
            latent = ndtri(u) + pop.density_shift_per_decade * (float(parents["age"]) - 57.0) / 10.0
            return DENSITIES[int(np.searchsorted(self._density_cuts, latent))]
        if name == "view":
            return "MLO" if u < pop.mlo_fraction else "CC"
        if name == "marker":
            return "circle" if u < pop.marker_fraction else "none"
        raise KeyError(name)

    # -- rendering ------------------------------------------------------------------------------------
    def breast_mask(self, subject: Subject, size: int) -> np.ndarray:
        """Soft mask of the breast (muscle included) in canonical orientation (chest wall on the left).

        Args:
            subject: the subject; its image factors and view are read.
            size: image side in pixels.

        Returns:
            The mask in [0, 1], shape (size, size).
        """
        return self._anatomy(subject, size)[0]

    def _anatomy(
        self, subject: Subject, size: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Breast mask, inner level (0 at the skin, ~1 deep inside), pectoral mask, and coordinates."""
        u, view = subject.noise, subject.attributes["view"]
        y, x = grid(size)
        depth = (x + 1.0) / 2.0  # 0 at the chest wall, 1 at the far edge
        reach = lerp(0.55, 0.85, u["breast_size"])
        half_height = lerp(0.5, 0.7, u["breast_height"])
        exponent = lerp(1.7, 2.6, u["breast_shape"])
        centre_y = lerp(-0.06, 0.1, u["position_y"])
        if view == "MLO":  # the breast hangs lower and the axillary tail runs up the chest wall
            centre_y += 0.12
            half_height += 0.1
        level = 1.0 - (depth / reach) ** exponent - np.abs((y - centre_y) / half_height) ** 2.2
        pectoral = np.zeros_like(x)
        if view == "MLO":
            width = lerp(0.22, 0.4, u["pectoral_width"])
            length = lerp(0.9, 1.5, u["pectoral_length"])
            t = np.clip((y + 1.0) / length, 0.0, 1.0)
            muscle_edge = width * (1.0 - t) ** 0.85
            pectoral = smoothstep(0.006, -0.006, depth - muscle_edge) * (t < 1)
            tail = 1.0 - (depth / (width + 0.18)) ** 2 - np.abs((y + 0.35) / 0.75) ** 2
            level = np.maximum(level, tail)
        mask = smoothstep(-0.01, 0.01, level) * (depth >= 0)
        mask = np.maximum(mask, pectoral)
        return mask, np.clip(level, 0.0, 1.0), pectoral, y, depth

    def render(self, subject: Subject, size: int, for_processing: bool = False) -> np.ndarray:
        """Display image in [0, 1] (bright = dense, background black), canonical orientation, float32.

        ``for_processing=True`` returns the raw detector signal instead (bright background, tissue dark,
        linear in transmitted intensity), as a FOR PROCESSING image.

        Args:
            subject: the subject to render.
            size: image side in pixels.
            for_processing: return the raw detector signal instead of the display image (default False).

        Returns:
            The ``size`` x ``size`` image.
        """
        u, a = subject.noise, subject.attributes
        mask, level, pectoral, y, depth = self._anatomy(subject, size)
        anatomy = np.random.default_rng(subject.seeds["anatomy"])
        noise_rng = np.random.default_rng(subject.seeds["noise"])

        thickness = np.sqrt(smoothstep(0.0, 0.35, level)) * mask
        interior = smoothstep(lerp(0.08, 0.2, u["skin_fat"]), 0.4, level) * smoothstep(0.02, 0.1, depth)
        interior *= 1.0 - pectoral

        # fibroglandular tissue: a 1/f^3 field biased towards a central cone, cut at the density's fraction
        coarse = power_law_noise(anatomy, size, beta=3.0, low_cut=2.0)
        fine = power_law_noise(anatomy, size, beta=2.4, low_cut=6.0)
        centre = lerp(-0.25, 0.25, u["tissue_centre"])
        cone = -(((y - centre) / 0.55) ** 2) - ((depth - 0.35) / 0.45) ** 2
        score = coarse + 0.35 * fine + 1.4 * cone
        low, high = DENSITY_FRACTIONS[str(a["density"])]
        fraction = lerp(low, high, u["tissue_fraction"])
        inside = interior > 0.5
        threshold = np.quantile(score[inside], 1.0 - fraction) if inside.any() else np.inf
        glandular = blur(expit((score - threshold) / 0.35), size / 200.0) * interior

        ligaments = ridges(power_law_noise(anatomy, size, beta=2.6, low_cut=4.0), 0.07)
        ligaments *= (1.0 - glandular) * mask * 0.12
        lobules = 0.025 * fine * mask * (1.0 - glandular) + 0.05 * fine * glandular

        vessels, calcified = self._vessels(anatomy, u, a, y, depth, mask * (1.0 - pectoral))
        muscle = pectoral * (0.55 + 0.06 * coarse)
        marker = self._marker(u, a, y, depth, level)

        attenuation = (
            thickness * lerp(0.85, 1.1, u["compression"]) * (0.5 + 0.45 * glandular)
            + ligaments
            + lobules
            + vessels
            + calcified
            + muscle
            + marker
        )
        signal = np.exp(-lerp(1.4, 1.9, u["exposure"]) * attenuation)  # transmitted fraction
        quantum = blur(noise_rng.standard_normal(signal.shape).astype(np.float32), 0.5)
        noise_level = lerp(0.003, 0.008, u["dose"])
        if for_processing:
            raw = signal + noise_level * quantum * np.sqrt(signal)
            return np.clip(raw, 0.0, 1.0).astype(np.float32)
        display = (1.0 - signal) / (1.0 - math.exp(-2.2))
        display = np.clip(display, 0.0, 1.0) ** lerp(1.2, 1.7, u["contrast"])
        display = unsharp(display, sigma=size / 100.0, amount=0.6)
        display = (display + noise_level * quantum) * smoothstep(0.0, 0.5, mask)
        return np.clip(display, 0.0, 1.0).astype(np.float32)

    @staticmethod
    def _vessels(
        rng: np.random.Generator,
        u: Mapping[str, float],
        a: Mapping[str, AttributeValue],
        y: np.ndarray,
        depth: np.ndarray,
        mask: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Two arteries running from the chest wall towards the nipple; calcified walls from age 50 on."""
        size = y.shape[0]
        path = np.ones(y.shape, dtype=bool)  # False on the vessel centre lines
        arc = np.zeros(y.shape, dtype=np.float32)  # position along the vessel, for the calcified beads
        course = lerp(-0.3, 0.3, u["vessel_course"])
        for offset in (-0.28, 0.25):
            wiggle = rng.uniform(0.03, 0.09, size=2)
            phase = rng.uniform(0, 2 * math.pi, size=2)
            t = np.linspace(0.0, 0.7, 4 * size, dtype=np.float32)
            path_y = (
                course * 0.4
                + offset * (1 - t)
                + wiggle[0] * np.sin(7 * t + phase[0])
                + wiggle[1] * np.sin(13 * t + phase[1])
            )
            rows = np.clip(((path_y + 1) / 2 * size).astype(int), 0, size - 1)
            cols = np.clip((t * size).astype(int), 0, size - 1)
            path[rows, cols] = False
            arc[rows, cols] = t
        distance, (near_r, near_c) = ndimage.distance_transform_edt(path, return_indices=True)
        distance = distance.astype(np.float32) * (2.0 / size)
        beads = 0.5 + 0.5 * np.cos(40.0 * arc[near_r, near_c])
        vessels = 0.06 * np.exp(-((distance / 0.012) ** 2)) * mask
        amount = float(np.clip((float(a["age"]) - 50.0) / 35.0, 0.0, 1.0))
        wall = np.exp(-(((distance - 0.011) / 0.005) ** 2))
        calcified = 0.4 * amount * wall * (beads > 0.35) * mask
        return vessels, calcified

    @staticmethod
    def _marker(
        u: Mapping[str, float],
        a: Mapping[str, AttributeValue],
        y: np.ndarray,
        depth: np.ndarray,
        level: np.ndarray,
    ) -> np.ndarray:
        """A radio-opaque circular skin marker (a ring), placed on the breast's outer third."""
        if a["marker"] != "circle":
            return np.zeros_like(y)
        angle = lerp(-0.9, 0.9, u["marker_position"])
        on_skin = np.argwhere(np.abs(level - 0.25) < 0.05)
        if len(on_skin) == 0:
            return np.zeros_like(y)
        size = y.shape[0]
        target = np.array([(math.sin(angle) + 1) / 2 * size, (0.4 + 0.5 * math.cos(angle)) * size])
        row, col = on_skin[np.argmin(np.sum((on_skin - target) ** 2, axis=1))]
        cy, cx = y[row, col], depth[row, col]
        radius = np.hypot(y - cy, (depth - cx) * 2.0)
        return 1.5 * np.exp(-(((radius - 0.06) / 0.008) ** 2))
