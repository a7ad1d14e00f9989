import random

from peft_apps.core.sampling import SortedBatchSampler


def _padding(order, lengths, bs):
    batches = [order[i:i + bs] for i in range(0, len(order), bs)]
    total = sum(max(lengths[j] for j in b) * len(b) for b in batches)
    return 1 - sum(lengths) / total


def test_each_index_once_reproducible_per_epoch_and_little_padding():
    rng = random.Random(0)
    lengths = [int(rng.lognormvariate(5.8, 0.35)) for _ in range(203)]
    s = SortedBatchSampler(lengths, batch_size=8, seed=3)
    first = list(s)
    assert sorted(first) == list(range(203))
    assert list(s) == first  # same epoch, same order (resume relies on it)
    s.set_epoch(1)
    second = list(s)
    assert sorted(second) == list(range(203)) and second != first
    assert list(SortedBatchSampler(lengths, 8, seed=4)) != first
    # the first batch holds the longest record; padding is far below a random order's
    assert max(lengths) in [lengths[i] for i in first[:8]]
    shuffled = list(range(203))
    rng.shuffle(shuffled)
    assert _padding(first, lengths, 8) < 0.08 < _padding(shuffled, lengths, 8)
