"""The training sampler: plain shuffling, shards per process, and draws balanced over a categorical attribute."""

import numpy as np
import pytest
from monai.data import Dataset
from torch.utils.data import WeightedRandomSampler

from medcf.attributes import SchemaError
from medcf.phantoms.mammo import MAMMO_SCHEMA
from medcf.training.data import balancing_weights, training_sampler

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


def test_without_balance_the_loader_shuffles_and_processes_get_disjoint_shards():
    dataset = marked_dataset(9)
    assert training_sampler(dataset, MAMMO_SCHEMA) is None
    shards = [set(training_sampler(dataset, MAMMO_SCHEMA, distributed=True, num_replicas=2, rank=r)) for r in (0, 1)]
    assert len(shards[0] & shards[1]) <= 1 and shards[0] | shards[1] == set(range(9))  # odd size: one repeat


def test_balanced_shards_draw_only_from_their_own_items():
    dataset = marked_dataset()
    own = [set(training_sampler(dataset, MAMMO_SCHEMA, distributed=True, num_replicas=2, rank=r)) for r in (0, 1)]
    for rank in (0, 1):
        sampler = training_sampler(dataset, MAMMO_SCHEMA, "marker", distributed=True, num_replicas=2, rank=rank)
        indices = drawn(sampler, epochs=20)
        assert set(indices) <= own[rank]
        assert 0.4 < np.mean(indices % 4 == 0) < 0.6
