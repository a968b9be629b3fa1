"""The CIDEr-D reward equals pycocoevalcap's Cider (what validation reports) on the same tokenised captions."""

import random
import shutil

import pytest

from avlformer.evaluation.cider_reward import CiderD, has_repeated_ngram, reward_words

WORDS = "a the man woman dog red blue ball runs jumps speaks loud soft music drum beep plays on under while".split()


def _corpus(seed=0, videos=12):
    rng = random.Random(seed)
    refs = {f"v{i}": [" ".join(rng.choices(WORDS, k=rng.randint(4, 14))) for _ in range(rng.randint(1, 3))]
            for i in range(videos)}
    hyps = {key: " ".join(rng.choices(WORDS, k=rng.randint(1, 16))) for key in refs}
    hyps["v0"] = refs["v0"][0]  # an exact match: the clipping and the length penalty at delta 0
    hyps["v1"] = ""             # an empty caption scores 0
    return refs, hyps


def test_reward_equals_pycocoevalcap_cider_with_the_corpus_statistics():
    pytest.importorskip("pycocoevalcap")
    from pycocoevalcap.cider.cider import Cider

    refs, hyps = _corpus()
    mean, per_video = Cider().compute_score(refs, {key: [hyps[key]] for key in refs})
    reward = CiderD({key: [ref.split() for ref in captions] for key, captions in refs.items()})
    ours = reward.score_many(list(refs), [hyps[key].split() for key in refs])
    assert ours == pytest.approx(list(per_video), rel=1e-9, abs=1e-12)
    assert sum(ours) / len(ours) == pytest.approx(mean, rel=1e-9)
    assert ours[0] > 1.0 and ours[1] == 0.0


def test_document_frequencies_come_from_the_given_split_not_the_scored_batch():
    refs = {"a": [["a", "dog", "barks"]], "b": [["a", "cat", "meows"]], "c": [["a", "cow", "moos"]]}
    reward = CiderD(refs)
    # "a" is in every video's references: its idf is 0, so a caption of only "a" earns nothing, however it is
    # batched, and "dog" (in one video of three) carries the score.
    assert reward.score("a", ["a"]) == 0.0
    # An exact match of three words: cosine 1 for n = 1..3, no 4-gram: 10 x 3/4.
    assert reward.score("a", ["a", "dog", "barks"]) == pytest.approx(7.5)
    assert reward.score("a", ["dog"]) > 0
    assert reward.reference_lengths["a"] == 3
    with pytest.raises(KeyError, match="no reference captions for video 'zzz'"):
        reward.score("zzz", ["a"])
    with pytest.raises(ValueError, match="no reference caption"):
        CiderD({"a": []})


@pytest.mark.skipif(shutil.which("java") is None, reason="PTBTokenizer needs Java")
def test_reward_words_match_validation_tokenisation_on_decoded_captions():
    pytest.importorskip("pycocoevalcap")
    from avlformer.evaluation.coco_metrics import tokenize

    captions = ["a man speaks. the crowd cheers.", "a dog's bark is loud, and it doesn't stop!",
                "a well-known song plays ; 3.5 seconds of silence follow", "the car ( red ) moves - then stops ?",
                "a woman's voice says \" hello \" twice", "x [ y ] { z } w", "it is 5:30 , 100% sure & more / less",
                "cannot gonna i'm they're", "so...then -- hmm; ok: fine! `quoted' stuff"]
    refs = {i: [caption] for i, caption in enumerate(captions)}
    ptb_refs, _ = tokenize({i: c for i, c in enumerate(captions)}, refs)
    for i, caption in enumerate(captions):
        assert reward_words(caption) == ptb_refs[i][0].split(), caption


def test_repeated_four_gram_detection():
    assert has_repeated_ngram("a dog runs on a dog runs on".split())
    assert not has_repeated_ngram("a dog runs on the grass and a dog runs".split())
    assert not has_repeated_ngram([])
