"""Chest X-ray phantom: a structural causal model over age, sex, race and disease that renders PA/AP
(and lateral) chest radiographs.

Causal graph: ``age -> disease``; ``sex`` and ``race`` are roots.

Structural equations (U_* uniform noise, correlated through the population's copula):
    age     = truncated-normal quantile(U_age)      (mean ``age_mean``, sd ``age_sd``, on [18, 95])
    sex     = F if U_sex < female_fraction else M
    race    = inverse-CDF(U_race) over White, Asian, Black
    disease = Pleural Effusion if U_disease < sigmoid(logit_at_60 + logit_per_decade * (age - 60) / 10)

Image mechanisms (what each attribute does to the picture, and where):
    age     bone mineral falls (ribs, clavicles and spine lose contrast), costal cartilages calcify
            (bright flecks at the anterior rib ends), the aortic knob enlarges and gains a calcified rim.
    sex     F adds breast soft-tissue shadows over both lower zones, with a curved inferior border.
    race    SYNTHETIC (no anatomical claim): the chest-wall soft tissue outside the lungs is slightly denser
            (White 0, Asian +1, Black +2 steps of ``race_soft_tissue_step``), subtle but learnable.
    disease Pleural Effusion fills the costophrenic recess of one or both sides with a homogeneous opacity
            whose upper border is a meniscus rising laterally, blunting the costophrenic angle.
Everything else (anatomy, positioning, exposure, noise, texture) comes from the image factors below.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
from scipy.special import expit

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
from medcf.phantoms.textures import (
    blob,
    blur,
    grid,
    lerp,
    power_law_noise,
    ridges,
    smoothstep,
    soft_inside,
    unsharp,
)

AGE_RANGE = (18.0, 95.0)
SEXES = ("M", "F")
RACES = ("White", "Asian", "Black")
DISEASES = ("No Finding", "Pleural Effusion")

CXR_SCHEMA = AttributeSchema(
    (
        Attribute("age", "continuous", low=AGE_RANGE[0], high=AGE_RANGE[1], unit="years"),
        Attribute("sex", "categorical", values=SEXES),
        Attribute("race", "categorical", values=RACES),
        Attribute("disease", "categorical", values=DISEASES, parents=("age",)),
    )
)

CXR_FACTORS = (
    Factor("thorax_width", "patient", "lateral extent of the lungs"),
    Factor("thorax_height", "patient", "height of the lung apices"),
    Factor("heart_size", "patient", "cardiac silhouette size (cardiothoracic ratio 0.40-0.52)"),
    Factor("heart_shift", "patient", "leftward offset of the heart"),
    Factor("heart_shape", "patient", "individual bending of the cardiac outline"),
    Factor("mediastinum_width", "patient", "width of the upper mediastinum"),
    Factor("rib_spacing", "patient", "vertical spacing of the ribs"),
    Factor("rib_slope", "patient", "downward slope of the posterior ribs"),
    Factor("clavicle_height", "patient", "height and tilt of the clavicles"),
    Factor("chest_wall", "patient", "thickness of the chest-wall soft tissue"),
    Factor("breast_size", "patient", "size of the breast shadows (visible only when sex is F)"),
    Factor("inspiration", "study", "depth of inspiration: diaphragm level"),
    Factor("rotation", "study", "in-plane rotation of the patient (+-4 degrees)"),
    Factor("shift_x", "study", "horizontal positioning offset"),
    Factor("shift_y", "study", "vertical positioning offset"),
    Factor("magnification", "study", "source-to-image magnification"),
    Factor("exposure", "study", "exposure (film density)"),
    Factor("contrast", "study", "display contrast (gamma)"),
    Factor("dose", "study", "quantum noise level"),
    Factor("sharpening", "study", "strength of the scanner's edge enhancement"),
    Factor("effusion_side", "study", "which side an effusion fills: right, left or both"),
    Factor("effusion_volume", "study", "effusion volume (visible only with Pleural Effusion)"),
)


@dataclass(frozen=True)
class CXRPopulation(Population):
    """Population of the chest phantom. Defaults make attribute amplification observable: sex is
    associated with age and race with disease through correlated noise, and disease depends on age.

    Args:
        female_fraction: probability of sex F, in [0, 1].
        race_probabilities: probabilities of White, Asian and Black; non-negative, summing to 1.
        age_mean: mean of the age normal before truncation to [18, 95]; must lie in that range.
        age_sd: standard deviation of the age normal, positive and finite.
        effusion_logit_at_60: log-odds of Pleural Effusion at age 60.
        effusion_logit_per_decade: change of that log-odds per decade of age.
        race_soft_tissue_step: extra chest-wall soft-tissue attenuation per race step (White 0, Asian 1, Black 2).
        noise_correlations: ``{"a~b": rho}`` correlations of the attribute noises (see :class:`Population`).

    Raises:
        SchemaError: when ``female_fraction``, ``race_probabilities`` or the age distribution is invalid.
    """

    female_fraction: float = 0.5
    race_probabilities: tuple[float, float, float] = (0.6, 0.15, 0.25)
    age_mean: float = 60.0
    age_sd: float = 18.0
    effusion_logit_at_60: float = -1.0
    effusion_logit_per_decade: float = 0.7
    race_soft_tissue_step: float = 0.05
    noise_correlations: Mapping[str, float] = field(default_factory=lambda: {"age~sex": -0.3, "race~disease": -0.3})

    def __post_init__(self) -> None:
        check_fraction("female_fraction", self.female_fraction)
        check_probabilities("race_probabilities", tuple(self.race_probabilities), len(RACES))
        check_age_distribution(self.age_mean, self.age_sd, AGE_RANGE)


@dataclass(frozen=True)
class ChestGeometry:
    """Anatomy of one frontal radiograph, in pixels: soft masks the renderer uses and tests measure.

    Every array has shape (size, size); coordinates are the normalized ones of
    :func:`~medcf.phantoms.textures.grid` after positioning.

    Attributes:
        lungs: soft mask of both lungs, the heart cut out.
        right_lung: soft mask of the patient's right lung (image left), the heart cut out.
        left_lung: soft mask of the patient's left lung (image right), the heart cut out.
        lung_depth: air depth in [0, 1], 0 at the lung border and rising inwards, the heart cut out.
        body: soft profile of the body outline.
        heart: thickness profile of the cardiac silhouette (0 outside).
        diaphragm_y: diaphragm height (y) under each pixel, for the patient's right and left sides.
        x: x coordinate of each pixel in the patient frame (after rotation, shift and magnification).
        y: y coordinate of each pixel in the patient frame.
        params: shape parameters drawn from the image factors (``half_width``, ``apex_y``, ``dome_y``,
            ``heart_rx``, ``heart_cx``, ``med_half``, ``apex_x``, ``recess_depth``).
    """

    lungs: np.ndarray
    right_lung: np.ndarray  # patient's right = image left
    left_lung: np.ndarray
    lung_depth: np.ndarray
    body: np.ndarray
    heart: np.ndarray
    diaphragm_y: tuple[np.ndarray, np.ndarray]
    x: np.ndarray
    y: np.ndarray
    params: dict[str, float]


class ChestXRayPhantom(Phantom):
    """Structural causal model of chest radiographs (see the module docstring for the equations).

    Args:
        population: population settings (default: ``CXRPopulation()``).
    """

    schema = CXR_SCHEMA
    factors = CXR_FACTORS
    study_level_attributes = ("disease",)

    def __init__(self, population: CXRPopulation | None = None) -> None:
        super().__init__(population or CXRPopulation())

    # -- structural equations -------------------------------------------------------------------------
    def mechanism(self, name: str, noise: Mapping[str, float], parents: Mapping[str, AttributeValue]) -> AttributeValue:
        """Structural equation of ``age``, ``sex``, ``race`` or ``disease`` (see the module docstring).

        Args:
            name: the attribute to compute.
            noise: the subject's exogenous noise (holds ``u_name``).
            parents: values of the attribute's parents (``age`` for ``disease``).

        Returns:
            The attribute's value.

        Raises:
            KeyError: when ``name`` is not an attribute of the schema.
        """
        pop: CXRPopulation = self.population  # type: ignore[assignment]
        u = noise[f"u_{name}"]
        if name == "age":
            return age_from_noise(u, pop.age_mean, pop.age_sd, AGE_RANGE)
        if name == "sex":
            return "F" if u < pop.female_fraction else "M"
        if name == "race":
            return categorical_from_noise(u, RACES, tuple(pop.race_probabilities))
        if name == "disease":
            return DISEASES[int(u < self.effusion_probability(float(parents["age"])))]
        raise KeyError(name)

    def effusion_probability(self, age: float) -> float:
        """P(Pleural Effusion | age): the disease mechanism's logistic curve.

        Args:
            age: age in years.

        Returns:
            The probability, in (0, 1).
        """
        pop: CXRPopulation = self.population  # type: ignore[assignment]
        return float(expit(pop.effusion_logit_at_60 + pop.effusion_logit_per_decade * (age - 60.0) / 10.0))

    # -- anatomy --------------------------------------------------------------------------------------
    def geometry(self, subject: Subject, size: int) -> ChestGeometry:
        """Positioned anatomy of a frontal view: lungs, body, heart, diaphragm.

        Args:
            subject: the subject; only its image factors are read.
            size: image side in pixels.

        Returns:
            The geometry.
        """
        u = subject.noise
        y0, x0 = grid(size)
        angle = math.radians(lerp(-4.0, 4.0, u["rotation"]))
        scale = lerp(0.93, 1.05, u["magnification"])
        dx, dy = lerp(-0.05, 0.05, u["shift_x"]), lerp(-0.04, 0.06, u["shift_y"])
        x = (math.cos(angle) * x0 + math.sin(angle) * y0 - dx) / scale
        y = (-math.sin(angle) * x0 + math.cos(angle) * y0 - dy) / scale

        p = {
            "half_width": lerp(0.74, 0.86, u["thorax_width"]),
            "apex_y": lerp(-0.84, -0.72, u["thorax_height"]),
            "dome_y": lerp(0.34, 0.52, u["inspiration"]),
            "heart_rx": lerp(0.24, 0.32, u["heart_size"]),
            "heart_cx": lerp(0.06, 0.14, u["heart_shift"]),
            "med_half": lerp(0.075, 0.11, u["mediastinum_width"]),
        }
        p["apex_x"] = 0.42 * p["half_width"]
        p["recess_depth"] = 0.11

        sides = []
        diaphragm = []
        depth_total = np.zeros_like(x)
        for sign in (-1.0, 1.0):  # -1: image left = patient's right
            xs = sign * x
            dome = p["dome_y"] + (0.045 if sign > 0 else 0.0)  # left hemidiaphragm sits lower
            bottom = dome + p["recess_depth"]
            t = np.clip((y - p["apex_y"]) / (bottom - p["apex_y"]), 0.0, 1.0)
            lateral = p["apex_x"] + (p["half_width"] - p["apex_x"]) * t**0.3
            # the mediastinal border widens below the aortic knob: pulmonary trunk and left atrial
            # appendage on the left, right atrium on the right, running into the heart borders
            widening = (0.11 if sign > 0 else 0.04) * smoothstep(-0.42, p["dome_y"] - 0.4, y)
            medial = p["apex_x"] - (p["apex_x"] - p["med_half"] - widening) * t**0.22
            dome_x = 0.38 * p["half_width"]
            lateral_part = np.clip((xs - dome_x) / (p["half_width"] - dome_x), 0.0, None)
            diaphragm_y = dome + p["recess_depth"] * lateral_part**2 + 0.05 * np.clip(dome_x - xs, 0, None) ** 2
            distance = np.minimum.reduce([lateral - xs, xs - medial, diaphragm_y - y, y - p["apex_y"]])
            mask = soft_inside(distance, 0.012)
            depth = np.clip(distance / 0.2, 0.0, 1.0) ** 0.6 * mask
            sides.append(mask)
            diaphragm.append(diaphragm_y)
            depth_total += depth

        # cardiac silhouette: a tilted ellipse along the heart's long axis whose outline is bent by two
        # harmonics (an individual shape), the lower part hidden under the diaphragm
        cy, cx, tilt = p["dome_y"] - 0.14, p["heart_cx"] + 0.08, math.radians(-35.0)
        along = (x - cx) * math.cos(tilt) - (y - cy) * math.sin(tilt)
        across = (x - cx) * math.sin(tilt) + (y - cy) * math.cos(tilt)
        angle = np.arctan2(across, along)
        phase = 2 * math.pi * u["heart_shape"]
        outline = 1.0 + 0.08 * np.cos(2 * angle + phase) + 0.05 * np.cos(3 * angle - 3 * phase)
        radius = np.hypot(along / (p["heart_rx"] + 0.08), across / 0.25) / outline
        heart = np.sqrt(np.clip(1.0 - radius**2, 0.0, None))
        heart_mask = smoothstep(0.0, 0.12, heart)
        right, left = (side * (1.0 - heart_mask) for side in sides)
        lungs = right + left
        body_half = p["half_width"] + lerp(0.08, 0.18, u["chest_wall"])
        shoulder = np.sqrt(smoothstep(-1.1, -0.62, y))
        body_width = 0.3 + (body_half + 0.06 - 0.3) * shoulder - 0.06 * smoothstep(-0.6, 1.0, y)
        body = soft_inside(body_width - np.abs(x), 0.03) * np.clip(1 - (x / (body_width + 0.03)) ** 2, 0, 1) ** 0.3
        return ChestGeometry(
            lungs,
            right,
            left,
            depth_total * (1.0 - heart_mask),
            body,
            heart,
            (diaphragm[0], diaphragm[1]),
            x,
            y,
            p,
        )

    # -- rendering ------------------------------------------------------------------------------------
    def render(self, subject: Subject, size: int, view: str = "PA") -> np.ndarray:
        """Display image in [0, 1] (bright = attenuating, as MONOCHROME2), float32, ``size`` x ``size``.

        Args:
            subject: the subject to render.
            size: image side in pixels.
            view: "LATERAL", "LL" or "RL" give a lateral view; anything else a frontal one (default "PA").

        Returns:
            The display image.
        """
        if view in ("LATERAL", "LL", "RL"):
            return self._render_lateral(subject, size)
        attenuation, _ = self._attenuation(subject, size)
        return self._expose(attenuation, subject, size)

    def _attenuation(self, subject: Subject, size: int) -> tuple[np.ndarray, ChestGeometry]:
        pop: CXRPopulation = self.population  # type: ignore[assignment]
        u, a = subject.noise, subject.attributes
        g = self.geometry(subject, size)
        x, y, p = g.x, g.y, g.params
        ax = np.abs(x)
        anatomy = np.random.default_rng(subject.seeds["anatomy"])
        age01 = (float(a["age"]) - AGE_RANGE[0]) / (AGE_RANGE[1] - AGE_RANGE[0])
        bone = 1.1 - 0.45 * age01  # bone mineral falls with age
        lung_soft = smoothstep(0.0, 0.6, g.lungs)

        # soft tissue: chest wall (race mechanism: synthetic density steps), abdomen below the diaphragm
        outside_lungs = g.body * (1.0 - lung_soft) * (1.0 - smoothstep(0.0, 0.3, g.heart))
        race_steps = RACES.index(str(a["race"]))
        below_diaphragm = smoothstep(0.0, 0.12, y - np.where(x < 0, g.diaphragm_y[0], g.diaphragm_y[1]))
        soft = g.body * (0.9 + 0.3 * below_diaphragm) + pop.race_soft_tissue_step * race_steps * outside_lungs

        # mediastinum, spine, trachea, heart, aortic knob, hila
        upper = smoothstep(-1.05, -0.75, y)
        mediastinum = 0.3 * np.exp(-((x / (p["med_half"] + 0.04)) ** 2)) * upper * (1.0 - below_diaphragm)
        endplates = np.cos(math.pi * (y + 1.0) / 0.085) ** 8
        spine = bone * 0.14 * soft_inside(0.065 - ax, 0.012) * (0.8 + 0.4 * endplates) * upper
        trachea = -0.25 * np.exp(-((x / 0.03) ** 2)) * soft_inside(-0.34 - y, 0.04) * upper
        heart = 0.07 * g.heart**0.5 * (1.0 - below_diaphragm)
        knob_r = 0.045 + 0.035 * age01
        knob_shape = blob(y, x, -0.44, p["med_half"] + 0.03, knob_r, knob_r)
        knob = 0.25 * np.sqrt(knob_shape)
        knob_rim = max(0.0, age01 - 0.4) * 0.5 * ridges(knob_shape - 0.3, 0.1) * (knob_shape > 0)
        hila = 0.12 * (blob(y, x, -0.1, -0.19, 0.13, 0.06) + blob(y, x, -0.08, 0.21, 0.13, 0.06))

        # ribs: posterior arcs with bright cortical edges, fainter anterior arcs; seen best over the lungs
        ribs = np.zeros_like(x)
        spacing = lerp(0.115, 0.135, u["rib_spacing"])
        slope = lerp(0.6, 0.9, u["rib_slope"])
        in_chest = soft_inside(p["half_width"] + 0.08 - ax, 0.04) * soft_inside(ax - 0.06, 0.02)
        for k in range(10):
            start = p["apex_y"] - 0.06 + k * spacing
            centre = start + slope * ((ax - 0.22) ** 2 - 0.045) / p["half_width"]
            d = (y - centre) / (0.03 + 0.012 * ax)
            ribs += (0.5 + 0.8 * np.exp(-((np.abs(d) - 0.85) ** 2) / 0.04)) * np.exp(-(d**2) / 1.8)
            if k < 7:
                anterior = start + 0.28 - 0.45 * (p["half_width"] - ax) + 0.4 * k * spacing
                ribs += 0.25 * np.exp(-(((y - anterior) / 0.028) ** 2)) * smoothstep(0.2, 0.45, ax)
        ribs *= in_chest * bone * (0.05 + 0.17 * lung_soft)

        # clavicles and humeral heads
        clav_y = lerp(-0.8, -0.7, u["clavicle_height"])
        clavicle_centre = clav_y - 0.14 * (ax - 0.1) + 0.3 * (ax - 0.45) ** 2
        clavicles = (
            0.22
            * bone
            * np.exp(-(((y - clavicle_centre) / 0.032) ** 2))
            * soft_inside(ax - 0.07, 0.02)
            * soft_inside(0.8 - ax, 0.05)
        )

        # costal cartilage calcification grows with age (anterior rib ends beside the heart)
        specks = anatomy.uniform(size=(14, 3))  # drawn whatever the age: same texture stream for all ages
        amount = float(np.clip((float(a["age"]) - 40.0) / 45.0, 0.0, 1.0))
        calcification = np.zeros_like(x)
        if amount > 0:
            for sy, sx, sr in specks:
                cy = lerp(-0.05, 0.3, sy)
                cx = (1 if sx > 0.5 else -1) * lerp(0.16, 0.34, abs(sx - 0.5) * 2)
                r = 0.008 + 0.01 * sr
                calcification += blob(y, x, cy, cx, r, r * 2.2)
            calcification *= 0.3 * amount

        # lung markings: vessels branching out from the hila, fading towards the periphery
        vessels = ridges(power_law_noise(anatomy, size, beta=3.0, low_cut=3.0, high_cut=size / 6), 0.3)
        hilar_distance = np.minimum(np.hypot(x + 0.19, y + 0.1), np.hypot(x - 0.21, y + 0.08))
        markings = 0.16 * vessels * np.exp(-hilar_distance / 0.35) * lung_soft
        parenchyma = 0.025 * power_law_noise(anatomy, size, beta=2.2, low_cut=2.0) * g.body

        # breasts (sex F): soft-tissue shadows over both lower zones, curved inferior border
        breasts = np.zeros_like(x)
        if a["sex"] == "F":
            size_f = lerp(0.6, 1.25, u["breast_size"])
            for sign in (-1.0, 1.0):
                cx, cy = sign * 0.6 * p["half_width"], p["dome_y"] - 0.05
                shape = blob(y, x, cy, cx, 0.3 * size_f**0.5, 0.36 * size_f**0.5)
                breasts += 0.14 * size_f * shape**0.5 * smoothstep(cy - 0.32, cy + 0.05, y)

        # pleural effusion: fluid fills the costophrenic recess; the meniscus rises laterally
        fluid_total = np.zeros_like(x)
        if a["disease"] == "Pleural Effusion":
            side_u = u["effusion_side"]
            sides = [(-1.0, g.diaphragm_y[0])] if side_u < 0.55 else []
            if side_u >= 0.4:
                sides.append((1.0, g.diaphragm_y[1]))
            height = lerp(0.14, 0.36, u["effusion_volume"])
            for sign, diaphragm_y in sides:
                xs = sign * x
                lateral01 = np.clip((xs - 0.15) / (p["half_width"] - 0.15), 0.0, 1.0)
                top = diaphragm_y - height * (0.3 + 0.7 * lateral01**1.5)
                fluid = smoothstep(-0.03, 0.06, y - top) * soft_inside(xs - 0.02, 0.02)
                fluid_total = np.maximum(fluid_total, fluid)
        air = 0.8 * g.lung_depth * (1.0 - 0.92 * fluid_total)
        effusion = 0.14 * fluid_total * lung_soft

        gastric = -0.2 * blob(y, x, p["dome_y"] + 0.17, 0.5, 0.06, 0.09) * below_diaphragm
        attenuation = (
            soft
            - air
            + mediastinum
            + spine
            + trachea
            + heart
            + knob
            + knob_rim
            + hila
            + ribs
            + clavicles
            + calcification
            + markings
            + parenchyma
            + breasts
            + effusion
            + gastric
        )
        return np.clip(attenuation, 0.0, None), g

    def _expose(self, attenuation: np.ndarray, subject: Subject, size: int) -> np.ndarray:
        """Detector and processing: exposure curve, gamma, edge enhancement, quantum noise."""
        u = subject.noise
        noise_rng = np.random.default_rng(subject.seeds["noise"])
        gain = lerp(1.3, 1.9, u["exposure"])
        image = 1.0 - np.exp(-gain * attenuation)
        image = image ** lerp(0.8, 1.25, u["contrast"])
        image = unsharp(image, sigma=size / 90.0, amount=lerp(0.2, 0.8, u["sharpening"]))
        quantum = blur(noise_rng.standard_normal(image.shape).astype(np.float32), 0.6)
        image = image + lerp(0.006, 0.02, u["dose"]) * quantum * np.sqrt(np.clip(1.0 - image, 0.05, 1.0))
        return np.clip(image, 0.0, 1.0).astype(np.float32)

    def _render_lateral(self, subject: Subject, size: int) -> np.ndarray:
        """A lateral view (patient facing image left): one superimposed lung field, heart anterior,
        spine posterior. Lateral views exist so the cohort builders have something to filter out."""
        u, a = subject.noise, subject.attributes
        y, x = grid(size)
        anatomy = np.random.default_rng(subject.seeds["anatomy"] + 1)
        age01 = (float(a["age"]) - AGE_RANGE[0]) / (AGE_RANGE[1] - AGE_RANGE[0])
        half_depth = lerp(0.62, 0.74, u["thorax_width"])
        neck = np.sqrt(smoothstep(-1.1, -0.6, y))
        body_half = 0.35 + (half_depth + 0.14 - 0.35) * neck
        body = soft_inside(body_half - np.abs(x - 0.02), 0.03) * np.sqrt(
            np.clip(1 - (x / (body_half + 0.05)) ** 2, 0, 1)
        )
        apex, dome = lerp(-0.82, -0.7, u["thorax_height"]), lerp(0.3, 0.46, u["inspiration"])
        centre_y, radius_y = (apex + dome) / 2, (dome - apex) / 2 + 0.1
        shape = 1 - np.abs((x - 0.04) / half_depth) ** 2.4 - np.abs((y - centre_y) / radius_y) ** 2
        diaphragm = dome + 0.22 * (x + 0.3) ** 2 - 0.05
        lung_distance = np.minimum(shape * 0.3, diaphragm - y)
        lung = soft_inside(lung_distance, 0.012) * np.clip(lung_distance / 0.15, 0, 1) ** 0.6
        heart = 0.3 * blob(y, x, dome - 0.12, -0.25, 0.3, lerp(0.28, 0.36, u["heart_size"])) ** 0.3
        spine_x = half_depth + 0.02
        vertebrae = np.cos(math.pi * (y + 1) / 0.09) ** 6
        spine = (
            (1.1 - 0.45 * age01) * 0.3 * soft_inside(0.07 - np.abs(x - spine_x), 0.012) * (0.6 + 0.4 * (1 - vertebrae))
        )
        sternum = 0.18 * soft_inside(0.025 - np.abs(x + half_depth + 0.02), 0.01) * soft_inside(0.15 - y, 0.05)
        markings = 0.1 * ridges(power_law_noise(anatomy, size, beta=2.4, low_cut=3.0), 0.22) * lung
        attenuation = 1.0 * body - 0.75 * lung + heart + spine + sternum + markings
        if a["disease"] == "Pleural Effusion":
            attenuation += 0.6 * lung * smoothstep(-0.03, 0.05, y - (diaphragm - 0.18 - 0.15 * x))
        return self._expose(np.clip(attenuation, 0, None), subject, size)
