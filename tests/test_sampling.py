"""K-shot sampling (docs/method.md 1.5): determinism and its skip rules."""

import random

import pytest

from labeler.method.sampling import Candidate, NotEnoughShotsError, is_eligible, sample_shots

HW = (200, 200)


def candidate(annotation_id, image_id, category_id=1, bbox=(50, 50, 40, 40), iscrowd=False, hw=HW):
    return Candidate(annotation_id, image_id, category_id, bbox, hw, iscrowd)


def pool(n, category_id=1, start=0):
    return [candidate(start + i, image_id=start + i, category_id=category_id) for i in range(n)]


def test_same_seed_same_draw_whatever_the_input_order():
    candidates = pool(20) + pool(20, category_id=2, start=100)
    first = sample_shots(candidates, [1, 2], shots=5, seed=3)
    shuffled = candidates[:]
    random.Random(0).shuffle(shuffled)
    assert sample_shots(shuffled, [1, 2], shots=5, seed=3) == first
    assert sample_shots(candidates, [1, 2], shots=5, seed=4) != first
    assert all(len(ids) == 5 and len(set(ids)) == 5 for ids in first.values())


def test_a_class_draw_does_not_depend_on_other_classes():
    alone = sample_shots(pool(20), [1], shots=4, seed=9)
    with_other = sample_shots(pool(20) + pool(7, category_id=2, start=100), [1, 2], shots=4, seed=9)
    assert with_other[1] == alone[1]


@pytest.mark.parametrize(
    "bbox, iscrowd, eligible",
    [
        ((50, 50, 40, 40), False, True),
        ((50, 50, 40, 40), True, False),  # crowd
        ((50, 50, 31.9, 40), False, False),  # narrower than 32 px
        ((50, 50, 40, 31), False, False),  # shorter than 32 px
        ((9.9, 50, 40, 40), False, False),  # within 10 px of the left border
        ((10, 10, 40, 40), False, True),  # exactly 10 px away
        ((50, 50, 140, 40), False, True),  # right edge at 190 = 200 - 10
        ((50, 50, 141, 40), False, False),  # right edge within 10 px
        ((50, 151, 40, 40), False, False),  # bottom edge within 10 px
    ],
)
def test_skip_rules(bbox, iscrowd, eligible):
    assert is_eligible(candidate(1, 1, bbox=bbox, iscrowd=iscrowd)) is eligible


def test_skipped_candidates_are_never_drawn():
    good = pool(3)
    bad = [
        candidate(10, 10, iscrowd=True),
        candidate(11, 11, bbox=(50, 50, 10, 10)),
        candidate(12, 12, bbox=(0, 0, 40, 40)),
    ]
    chosen = sample_shots(good + bad, [1], shots=3, seed=0)
    assert sorted(chosen[1]) == [0, 1, 2]


def test_each_image_used_at_most_once_per_class():
    same_image = [candidate(i, image_id=7) for i in range(5)]
    chosen = sample_shots(same_image + [candidate(50, 8)], [1], shots=2, seed=0)
    assert len(chosen[1]) == 2 and 50 in chosen[1]
    with pytest.raises(NotEnoughShotsError):
        sample_shots(same_image, [1], shots=2, seed=0)


def test_too_few_candidates_names_the_class():
    with pytest.raises(NotEnoughShotsError) as info:
        sample_shots(pool(5) + pool(2, category_id=4, start=100), [1, 4], shots=3, seed=0)
    assert info.value.category_id == 4 and info.value.available == 2 and info.value.wanted == 3
