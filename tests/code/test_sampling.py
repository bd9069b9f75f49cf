import numpy as np

from ferflow.data.sampling import largest_remainder, stratified_pick


def test_largest_remainder_sums_exactly_and_is_proportional():
    counts = largest_remainder(10, np.array([1, 1, 1]))
    assert counts.sum() == 10 and sorted(counts.tolist()) == [3, 3, 4]
    assert largest_remainder(7, np.array([547, 8989])).tolist() == [0, 7]


def test_stratified_pick_keep_one_and_leave_one():
    labels = np.array([0] * 50 + [1] * 3 + [2])
    rng = np.random.default_rng(0)
    picked = stratified_pick(labels, 0.1, rng, keep_one=True)
    assert np.bincount(labels[picked], minlength=3).tolist() == [5, 1, 1]
    carved = stratified_pick(labels, 0.5, rng, keep_one=False)
    counts = np.bincount(labels[carved], minlength=3).tolist()
    assert counts[2] == 0  # a class's only row is never carved away
    assert counts[0] == 25 and counts[1] in (1, 2)
