import numpy as np

from data_prep.minhash import MinHasher, near_duplicate_clusters, optimal_bands, shingle_hashes
from data_prep.planted import planted_corpus, score


def test_signature_agreement_estimates_jaccard():
    words = [f"w{i}" for i in range(400)]
    a, b = " ".join(words[:300]), " ".join(words[100:400])  # 5-gram Jaccard = 196/404
    sa, sb = set(shingle_hashes(a).tolist()), set(shingle_hashes(b).tolist())
    true = len(sa & sb) / len(sa | sb)
    h = MinHasher()
    est = (h.signature(a) == h.signature(b)).mean()
    assert abs(est - true) < 0.1


def test_shingles_are_code_tokens_case_kept_whitespace_ignored():
    assert np.array_equal(shingle_hashes("def f(x):\n  return x+1"), shingle_hashes("def  f( x ) :\n\treturn x + 1"))
    assert not np.array_equal(shingle_hashes("Foo bar baz qux quux"), shingle_hashes("foo bar baz qux quux"))


def test_lsh_bands_match_the_standard_choice_for_0_7_and_256_perms():
    assert optimal_bands(0.7, 256) == (25, 10)


def test_planted_near_duplicates_removed_distinct_files_kept():
    docs = planted_corpus(25, seed=1, distinct_only=25)
    h = MinHasher()
    sigs = np.stack([h.signature(d.text) for d in docs])
    reps = near_duplicate_clusters(sigs)
    s = score(docs, list(reps == np.arange(len(docs))))
    assert s["recall"] >= 0.95 and s["precision"] >= 0.95, s
    assert s["distinct_kept"] == 1.0 and s["recall_exact"] == 1.0, s


def test_rows_without_tokens_are_never_clustered():
    h = MinHasher()
    sigs = np.stack([h.signature("!!!"), h.signature("..."), h.signature("a b c d e f")])
    assert list(near_duplicate_clusters(sigs)) == [0, 1, 2]
