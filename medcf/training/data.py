"""Training data: prepared arrays listed in a preparation manifest (phantom training sets are made by
:mod:`medcf.jobs.phantom_sets`; training never imports phantoms)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from monai.data import CacheDataset, partition_dataset
from monai.transforms import LoadImaged
from torch.utils.data import DistributedSampler, Sampler, WeightedRandomSampler

from medcf.core.attributes import AttributeSchema, SchemaError
from medcf.core.conditioning import encode_attributes
from medcf.core.manifest_labels import allowed_rows, read_manifest
from medcf.runtime.distributed import Shard

logger = logging.getLogger("medcf.training")
T = TypeVar("T")


def manifest_items(manifest: str | Path, schema: AttributeSchema, split: str | None = None) -> list[dict[str, Any]]:
    """``{"image": path, "attributes": codes}`` for every prepared image of ``split`` (all when None).

    Args:
        manifest: the preparation manifest CSV; only rows with ``status`` ``ok`` are used, and image paths are
            taken relative to its folder.
        schema: the attributes; the manifest needs a column for each.
        split: keep only the rows of this split; None keeps all.

    Returns:
        One item per image, its attribute codes as made by :func:`~medcf.core.conditioning.encode_attributes`.

    Raises:
        SchemaError: when an attribute column is missing, ``split`` is given without a ``split`` column, or an
            image lacks attribute values. Rows with values outside ``schema`` are left out with a warning
            (:func:`~medcf.core.manifest_labels.allowed_rows`).
    """
    manifest = Path(manifest)
    table = read_manifest(manifest)
    missing = [name for name in schema.names if name not in table.columns]
    if missing:
        raise SchemaError(
            f"{manifest}: no column(s) {', '.join(missing)}; prepare the images with a cohort "
            "table that has these attributes"
        )
    if split is not None:
        if "split" not in table.columns:
            raise SchemaError(f"{manifest}: no 'split' column; prepare the images with a cohort table")
        table = table[table["split"] == split]
    unlabelled = table[table[list(schema.names)].isna().any(axis=1)]
    if len(unlabelled):
        raise SchemaError(
            f"{manifest}: {len(unlabelled)} prepared images lack attribute values "
            f"(first: line {unlabelled.index[0] + 2})"
        )
    table = allowed_rows(table, schema, manifest)
    codes = encode_attributes(schema, table[list(schema.names)].to_dict("records")).numpy()
    root = manifest.parent
    return [
        {"image": str(root / output), "attributes": code} for output, code in zip(table["output"], codes, strict=True)
    ]


def shard_items(items: Sequence[T], shard: Shard, even_divisible: bool = True) -> list[T]:
    """This process's part of ``items`` (every ``world``-th from position ``rank``). ``even_divisible``: all
    parts the same size, the shorter ones topped up from the head of ``items`` (every rank of a DDP training
    must run as many iterations, or it hangs); else each item exactly once (validation: :meth:`Shard.pick`).

    Args:
        items: every item, in the same order on each process.
        shard: this process's rank and the number of processes.
        even_divisible: give every process the same number of items (default True).

    Returns:
        This process's items (all of them with one process).
    """
    if shard.world == 1 or not even_divisible:
        return shard.pick(items)
    return partition_dataset(items, num_partitions=shard.world, even_divisible=True)[shard.rank]


def prepared_dataset(
    manifest: str | Path,
    schema: AttributeSchema,
    split: str | None = None,
    cache_rate: float = 1.0,
    num_workers: int = 0,
    shard: Shard | None = None,
    even_divisible: bool = True,
) -> CacheDataset:
    """A MONAI CacheDataset of prepared arrays (1 x H x W in [-1, 1]) with their attribute codes; with
    ``shard`` (a torchrun process's :class:`~medcf.runtime.distributed.Shard`) only that process's part, as
    :func:`shard_items` cuts it, is cached.

    Args:
        manifest: the preparation manifest CSV.
        schema: the attributes to encode.
        split: the split to load; None loads all.
        cache_rate: fraction of the items cached in memory (default 1.0).
        num_workers: threads that fill the cache (default 0).
        shard: this process's share of a distributed training; None loads every item.
        even_divisible: with ``shard``, give every process the same number of items (see :func:`shard_items`).

    Returns:
        The dataset of ``{"image": array, "attributes": codes}`` items.

    Raises:
        SchemaError: when the manifest is not usable (see :func:`manifest_items`), the split has no images, or
            it has fewer images than processes.
    """
    items = manifest_items(manifest, schema, split)
    if not items:
        raise SchemaError(f"{manifest}: no prepared images in split {split!r}")
    if shard is not None and shard.world > 1:
        total = len(items)
        if total < shard.world:
            raise SchemaError(f"{manifest}: split {split!r} has {total} images, fewer than the {shard.world} processes")
        items = shard_items(items, shard, even_divisible)
        logger.info(
            "rank %d of %d caches %d of the %d images of split %r", shard.rank, shard.world, len(items), total, split
        )
    return CacheDataset(
        items,
        transform=LoadImaged(keys="image", reader="NumpyReader", image_only=True),
        cache_rate=cache_rate,
        num_workers=num_workers,
        progress=False,
    )


def balancing_weights(dataset: CacheDataset, schema: AttributeSchema, attributes: str | Sequence[str]) -> np.ndarray:
    """Per-item weights that give every value of each named categorical attribute the same share of the draws.

    One attribute: 1 / (number of items sharing its value). Several: the product of these factors, one per
    attribute; each attribute's values then get equal shares as far as the data's joint counts allow
    (exactly when the attributes are independent in the data).

    Args:
        dataset: items with an ``attributes`` code vector.
        schema: attribute order of the codes.
        attributes: a categorical attribute, or a list of them (e.g. ``[disease, race]``).

    Returns:
        One weight per item (unnormalised: a weighted sampler only needs their ratios).
    """
    names = [attributes] if isinstance(attributes, str) else list(attributes)
    if not names:
        raise SchemaError("balance: name at least one categorical attribute (or null for none)")
    weights = np.ones(len(dataset.data))
    for attribute in names:
        if attribute not in schema.names:
            raise SchemaError(f"balance: {attribute!r} is not an attribute of the schema ({', '.join(schema.names)})")
        if schema[attribute].kind != "categorical":
            raise SchemaError(f"balance: {attribute!r} is continuous; only a categorical attribute can be balanced")
        column = schema.names.index(attribute)
        codes = np.array([int(item["attributes"][column]) for item in dataset.data])
        weights = weights / np.bincount(codes)[codes]
    return weights


def training_sampler(
    dataset: CacheDataset,
    schema: AttributeSchema,
    balance: str | Sequence[str] | None = None,
    seed: int = 0,
    sharded: bool = False,
) -> Sampler | None:
    """The training sampler: None (the loader shuffles), or for a process's own shard (``sharded``: a dataset
    made with ``prepared_dataset(shard=...)``) a shuffle seeded by ``seed`` and the epoch (MONAI's engines call
    ``set_epoch``; a rerun or a resumed run draws the same orders). With ``balance`` (a categorical attribute or a
    list of them, :func:`balancing_weights`), draws (with replacement) that give every value an equal share, a
    shard's weights from that shard's items. Weighting by the condition leaves each p(image | condition) the
    model learns unchanged; a rare value (a skin marker on a quarter of the images) just gets as many gradient
    steps as a common one.
    The unconditional (dropped-condition) branch then learns the balanced mix instead of the data's.

    Args:
        dataset: the training dataset (items with an ``attributes`` code vector).
        schema: attribute order of the codes.
        balance: a categorical attribute or a list of them to balance; None for no balancing.
        seed: seed of the shuffle or of the weighted draws (default 0).
        sharded: ``dataset`` holds only this process's shard (default False).

    Returns:
        A ``WeightedRandomSampler`` with ``balance``, else a one-replica ``DistributedSampler`` when
        ``sharded``, else None.

    Raises:
        SchemaError: when ``balance`` is empty, or names an unknown or continuous attribute.
    """
    if balance is not None:
        weights = balancing_weights(dataset, schema, balance)
        generator = torch.Generator().manual_seed(seed)
        return WeightedRandomSampler(torch.as_tensor(weights), len(weights), replacement=True, generator=generator)
    if sharded:  # one replica: the whole (already sharded) dataset, reshuffled each epoch
        return DistributedSampler(dataset, num_replicas=1, rank=0, shuffle=True, seed=seed)
    return None
