"""Sharded evaluate: rank 0 joins the processes' shares back into a single process's order, also when a process
had no image of the seed, or rejected every image it had (no torchrun needed: the join itself)."""

import torch

from medcf.measure.decoded import DecodedSetting, MadeCounterfactuals


def share(positions: list[int], rejected: int = 0) -> MadeCounterfactuals:
    """A process's counterfactuals of the seed's images at ``positions`` (each image's value is its position)."""
    values = torch.tensor(positions, dtype=torch.float32)
    images = values.view(-1, 1, 1, 1).expand(-1, 1, 2, 2).clone() if positions else None
    return MadeCounterfactuals(
        positions=positions,
        attributes=[{"age": float(p)} for p in positions],
        rejected=rejected,
        network_evaluations=4 if positions else 0,
        images=images,
        reference=None if images is None else images + 100,
        back=None if images is None else images - 100,
        after={"age": values} if positions else {},
        reconstructed={"age": values + 0.5} if positions else {},
        features=None if images is None else values.view(-1, 1).repeat(1, 3),
        seconds=1.0,
    )


def test_interleaved_shares_come_back_in_the_order_of_the_seeds_images():
    joined = MadeCounterfactuals.joined([share([0, 2, 4]), share([1, 3], rejected=1)])
    assert joined.positions == [0, 1, 2, 3, 4] and joined.rejected == 1 and joined.seconds == 2.0
    assert [a["age"] for a in joined.attributes] == [0, 1, 2, 3, 4]
    assert joined.images[:, 0, 0, 0].tolist() == [0, 1, 2, 3, 4]
    assert joined.reference[:, 0, 0, 0].tolist() == [100, 101, 102, 103, 104]
    assert joined.back[:, 0, 0, 0].tolist() == [-100, -99, -98, -97, -96]
    assert joined.after["age"].tolist() == [0, 1, 2, 3, 4]
    assert joined.reconstructed["age"].tolist() == [0.5, 1.5, 2.5, 3.5, 4.5]
    assert joined.features[:, 0].tolist() == [0, 1, 2, 3, 4]


def test_a_process_without_images_or_with_every_image_rejected_adds_nothing_but_its_rejections():
    alone = share([0, 1, 2])
    for empty in (share([]), share([], rejected=2)):
        joined = MadeCounterfactuals.joined([empty, alone])
        assert joined.positions == [0, 1, 2] and joined.rejected == alone.rejected + empty.rejected
        assert torch.equal(joined.images, alone.images) and joined.after["age"].tolist() == [0, 1, 2]
    nothing = MadeCounterfactuals.joined([share([]), share([], rejected=3)])
    assert nothing.positions == [] and nothing.images is None and nothing.rejected == 3


def test_composition_cycles_join_in_order_and_skip_a_process_that_cycled_nothing():
    first = DecodedSetting([0, 2], {"composition_1": torch.tensor([10.0, 12.0])}, {"do(age=+10)": share([0, 2])})
    second = DecodedSetting([1], {"composition_1": torch.tensor([11.0])}, {"do(age=+10)": share([1])})
    idle = DecodedSetting([], {}, {"do(age=+10)": share([])})
    joined = DecodedSetting.joined([first, idle, second])
    assert joined.cycled == [0, 1, 2]
    assert joined.composition["composition_1"].tolist() == [10.0, 11.0, 12.0]
    assert joined.made["do(age=+10)"].positions == [0, 1, 2]
