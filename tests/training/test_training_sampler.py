"""The training sampler: plain shuffling, shards of the items per process, and draws balanced over an attribute."""

import numpy as np
import pandas as pd
import pytest
from monai.data import Dataset
from torch.utils.data import WeightedRandomSampler

from medcf.core.attributes import SchemaError
from medcf.phantoms.mammo import MAMMO_SCHEMA
from medcf.runtime.distributed import Shard
from medcf.training.data import balancing_weights, prepared_dataset, shard_items, training_sampler

MARKER = MAMMO_SCHEMA.names.index("marker")


def marked_dataset(size: int = 200, marked_every: int = 4) -> Dataset:
    """Items whose attribute codes carry the marker (code 1) on every ``marked_every``-th item."""
    codes = np.zeros((size, len(MAMMO_SCHEMA.names)), dtype=np.float32)
    codes[::marked_every, MARKER] = 1
    return Dataset([{"image": f"{i}.npy", "attributes": code} for i, code in enumerate(codes)])


def drawn(sampler, epochs: int) -> np.ndarray:
    return np.array([index for _ in range(epochs) for index in sampler])


def test_balanced_draws_give_a_rare_value_half_of_the_batches():
    dataset = marked_dataset()
    sampler = training_sampler(dataset, MAMMO_SCHEMA, balance="marker", seed=3)
    assert isinstance(sampler, WeightedRandomSampler) and len(sampler) == len(dataset)
    indices = drawn(sampler, epochs=20)
    assert 0.45 < np.mean(indices % 4 == 0) < 0.55, "a quarter of the items should make half of the draws"
    assert np.array_equal(indices[:200], drawn(training_sampler(dataset, MAMMO_SCHEMA, "marker", seed=3), 1))


def test_weights_only_depend_on_the_value_and_bad_names_are_refused():
    weights = balancing_weights(marked_dataset(8, 4), MAMMO_SCHEMA, "marker")
    assert weights.tolist() == [1 / 2, 1 / 6, 1 / 6, 1 / 6, 1 / 2, 1 / 6, 1 / 6, 1 / 6]
    with pytest.raises(SchemaError, match="balance: 'age' is continuous"):
        training_sampler(marked_dataset(), MAMMO_SCHEMA, balance="age")
    with pytest.raises(SchemaError, match="balance: 'sex' is not an attribute"):
        training_sampler(marked_dataset(), MAMMO_SCHEMA, balance="sex")


def test_processes_get_disjoint_shards_of_equal_size_for_training_and_each_item_once_for_validation():
    items = list(range(9))
    training = [shard_items(items, Shard(rank, 2)) for rank in (0, 1)]
    assert [len(part) for part in training] == [5, 5] and set(training[0]) | set(training[1]) == set(items)
    assert len(set(training[0]) & set(training[1])) == 1  # odd size: one item is topped up from the head
    validation = [shard_items(items, Shard(rank, 2), even_divisible=False) for rank in (0, 1)]
    assert sorted(validation[0] + validation[1]) == items
    assert shard_items(items, Shard()) == items


def test_a_split_smaller_than_the_number_of_processes_is_refused_by_name(tmp_path):
    row = {"status": "ok", "source": "a.dcm", "output": "a.npy", "split": "val", "age": 50, "race": "White"}
    row |= {"density": "B", "view": "CC", "marker": "none"}
    pd.DataFrame([row, row]).to_csv(tmp_path / "manifest.csv", index=False)
    with pytest.raises(SchemaError, match=r"manifest.csv: split 'val' has 2 images, fewer than the 3 processes"):
        prepared_dataset(tmp_path / "manifest.csv", MAMMO_SCHEMA, "val", shard=Shard(2, 3), even_divisible=False)


def test_a_shard_is_reshuffled_each_epoch_the_same_way_on_a_rerun():
    dataset = marked_dataset(9)
    assert training_sampler(dataset, MAMMO_SCHEMA) is None  # a single process: the loader shuffles
    orders = []
    for _ in range(2):
        sampler = training_sampler(dataset, MAMMO_SCHEMA, seed=5, sharded=True)
        for epoch in (1, 2):
            sampler.set_epoch(epoch)  # MONAI's engines do this at each epoch start
            orders.append(list(sampler))
    assert all(sorted(order) == list(range(9)) for order in orders)
    assert orders[0] != orders[1] and orders[:2] == orders[2:]


def test_balanced_draws_of_a_shard_are_weighted_by_the_shard_alone():
    dataset = marked_dataset(16, 8)  # 2 marked items of 16; a shard of every other item holds both
    shard = Dataset(shard_items(dataset.data, Shard(0, 2)))
    sampler = training_sampler(shard, MAMMO_SCHEMA, "marker", seed=1, sharded=True)
    assert len(sampler) == 8 and sampler.weights.tolist() == [1 / 2] + [1 / 6] * 3 + [1 / 2] + [1 / 6] * 3
    indices = drawn(sampler, epochs=40)
    assert set(indices) <= set(range(8)) and 0.4 < np.mean(indices % 4 == 0) < 0.6


def test_balancing_two_attributes_gives_each_of_their_values_half_of_the_draws():
    """--balance [marker, view]: the weights multiply, so with independent attributes each value of each gets
    half of the draws although both are rare in the data (a marker on every 4th item, MLO on every 3rd)."""
    codes = np.zeros((48, len(MAMMO_SCHEMA.names)), dtype=np.float32)
    codes[::4, MARKER] = 1
    view = MAMMO_SCHEMA.names.index("view")
    codes[::3, view] = 1
    dataset = Dataset([{"image": f"{i}.npy", "attributes": code} for i, code in enumerate(codes)])
    weights = balancing_weights(dataset, MAMMO_SCHEMA, ["marker", "view"])
    columns = {"marker": MARKER, "view": view}
    share = {name: weights[codes[:, column] == 1].sum() / weights.sum() for name, column in columns.items()}
    assert share == pytest.approx({"marker": 0.5, "view": 0.5})
    with pytest.raises(SchemaError, match="name at least one"):
        balancing_weights(dataset, MAMMO_SCHEMA, [])
