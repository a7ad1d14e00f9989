from textkit import stats


def test_word_counts_ignores_case():
    assert stats.word_counts("a A b")["a"] == 2
