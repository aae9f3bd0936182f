"""Korean ROUGE: morpheme tokenization and scores checked against hand arithmetic.

rouge_score's F-measure is 2PR / (P + R) with P = overlap / |prediction|,
R = overlap / |reference| (n-gram counts, or LCS length for rougeL).
"""

import pytest
from rouge_score import rouge_scorer

from trainer.run import rouge
from trainer.run.rouge import check_references, clean_prediction, korean_rouge, morphemes

REF = "나는 학교에 갔다"
PRED = "나는 집에 빨리 갔다"


def assert_scores(got, r1, r2, rl):
    assert got["rouge1"] == pytest.approx(r1)
    assert got["rouge2"] == pytest.approx(r2)
    assert got["rougeL"] == pytest.approx(rl)
    assert got["rouge_avg"] == pytest.approx((r1 + r2 + rl) / 3)


def test_morphemes_split_particles_and_endings():
    # Particles (는, 에) and the past-tense ending (었) are morphemes of their own;
    # 갔 is restored to its stem 가 + 었.
    assert morphemes(REF) == ["나", "는", "학교", "에", "가", "었", "다"]
    assert morphemes(PRED) == ["나", "는", "집", "에", "빨리", "가", "었", "다"]


def test_partial_overlap_by_hand():
    # ref  (7): 나 는 학교 에 가 었 다
    # pred (8): 나 는 집 에 빨리 가 었 다
    # rouge1: common unigrams 나 는 에 가 었 다 = 6; P = 6/8, R = 6/7
    #         F = 2 * (3/4)(6/7) / (3/4 + 6/7) = (36/28) / (45/28) = 4/5
    # rouge2: ref bigrams (6): 나는 는학교 학교에 에가 가었 었다
    #         pred bigrams (7): 나는 는집 집에 에빨리 빨리가 가었 었다
    #         common 나는 가었 었다 = 3; P = 3/7, R = 3/6
    #         F = 2 * (3/7)(1/2) / (3/7 + 1/2) = (3/7) / (13/14) = 6/13
    # rougeL: LCS 나 는 에 가 었 다 = 6; same P, R as rouge1, F = 4/5
    assert_scores(korean_rouge([PRED], [[REF]]), 4 / 5, 6 / 13, 4 / 5)


def test_default_tokenizer_scores_hangul_zero_ours_does_not():
    # rouge_score keeps only [a-z0-9]: every Hangul token vanishes.
    default = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"])
    assert all(s.fmeasure == 0 for s in default.score(REF, PRED).values())
    assert korean_rouge([PRED], [[REF]])["rouge1"] == pytest.approx(4 / 5)


def test_tags_stay_whole():
    assert morphemes("#Person1#이 #Person2#에게 전화했다") == [
        "#Person1#", "이", "#Person2#", "에게", "전화", "하", "었", "다",
    ]
    assert morphemes("#PhoneNumber#로 전화해") == ["#PhoneNumber#", "로", "전화", "하", "어"]
    assert morphemes("#Person1##Person2#") == ["#Person1#", "#Person2#"]


def test_tag_counts_as_one_token_in_overlap():
    # ref  (8): #Person1# 이 #Person2# 에게 전화 하 었 다
    # pred (6): #Person1# 이 전화 하 었 다
    # rouge1: all 6 pred tokens in ref; P = 1, R = 6/8 = 3/4, F = (3/2) / (7/4) = 6/7
    # rouge2: pred bigrams (5): #P1이 이전화 전화하 하었 었다
    #         ref bigrams (7): #P1이 이#P2 #P2에게 에게전화 전화하 하었 었다
    #         common #P1이 전화하 하었 었다 = 4; P = 4/5, R = 4/7
    #         F = 2 * (16/35) / (48/35) = 2/3
    # rougeL: LCS = the whole pred (6), F = 6/7
    got = korean_rouge(["#Person1#이 전화했다"], [["#Person1#이 #Person2#에게 전화했다"]])
    assert_scores(got, 6 / 7, 2 / 3, 6 / 7)


def test_different_tags_do_not_overlap():
    # ref #Person1# 이 전화 하 었 다, pred #Person2# 가 전화 하 었 다 (6 each).
    # If the tags were split, "person" would match; whole, they don't.
    # rouge1: common 전화 하 었 다 = 4, P = R = F = 4/6
    # rouge2: common 전화하 하었 었다 = 3 of 5, F = 3/5
    # rougeL: LCS 전화 하 었 다 = 4, F = 4/6
    got = korean_rouge(["#Person2#가 전화했다"], [["#Person1#이 전화했다"]])
    assert_scores(got, 4 / 6, 3 / 5, 4 / 6)


def test_identical_texts_score_one():
    text = "#Person1#은 내일 #Person2#와 회의에 간다."
    assert_scores(korean_rouge([text], [[text]]), 1.0, 1.0, 1.0)


@pytest.mark.parametrize("empty", ["", "   \n"])
def test_empty_prediction_scores_zero(empty):
    assert_scores(korean_rouge([empty], [[REF]]), 0.0, 0.0, 0.0)


@pytest.mark.parametrize("drop", [False, True])
def test_punctuation_only_prediction_scores_zero(drop):
    assert_scores(korean_rouge(["?!..."], [[REF]], drop_punctuation=drop), 0.0, 0.0, 0.0)


def test_multiple_references_averaged():
    # pred 나 는 집 에 가 었 다 (7)
    # ref A identical: 1, 1, 1
    # ref B 나 는 학교 에 가 었 다 (7): rouge1 6/7; rouge2 common 나는 에가 가었 었다 = 4 of 6
    #   -> 2/3; rougeL LCS 6 -> 6/7
    # mean: rouge1 (1 + 6/7)/2 = 13/14, rouge2 (1 + 2/3)/2 = 5/6, rougeL 13/14
    got = korean_rouge(["나는 집에 갔다"], [["나는 집에 갔다", REF]])
    assert_scores(got, 13 / 14, 5 / 6, 13 / 14)


def test_examples_averaged():
    # example 1 identical -> 1; example 2 empty prediction -> 0; mean 1/2 each
    got = korean_rouge([REF, ""], [[REF], [REF]])
    assert_scores(got, 0.5, 0.5, 0.5)


PUNCTUATED_PRED = "나는, 밥을... 먹었다?!"
PUNCTUATED_REF = "「나는 밥을 먹었다.」"


def test_punctuation_counts_by_default():
    # The competition's morpheme analyzer output, nothing dropped:
    # pred (10): 나 는 , 밥 을 ... 먹 었 다 ?!
    # ref  (10): 「 나 는 밥 을 먹 었 다 . 」
    assert morphemes(PUNCTUATED_PRED) == ["나", "는", ",", "밥", "을", "...", "먹", "었", "다", "?!"]
    assert morphemes(PUNCTUATED_REF) == ["「", "나", "는", "밥", "을", "먹", "었", "다", ".", "」"]
    # rouge1: common 나 는 밥 을 먹 었 다 = 7; P = R = 7/10, F = 7/10
    # rouge2: pred bigrams (9): 나는 는, ,밥 밥을 을... ...먹 먹었 었다 다?!
    #         ref bigrams (9): 「나 나는 는밥 밥을 을먹 먹었 었다 다. .」
    #         common 나는 밥을 먹었 었다 = 4; P = R = 4/9, F = 4/9
    # rougeL: LCS 나 는 밥 을 먹 었 다 = 7, F = 7/10
    assert_scores(korean_rouge([PUNCTUATED_PRED], [[PUNCTUATED_REF]]), 7 / 10, 4 / 9, 7 / 10)


def test_punctuation_dropped_on_request():
    assert morphemes(PUNCTUATED_PRED, drop_punctuation=True) == ["나", "는", "밥", "을", "먹", "었", "다"]
    assert morphemes(PUNCTUATED_REF, drop_punctuation=True) == morphemes("나는 밥을 먹었다")
    got = korean_rouge([PUNCTUATED_PRED], [[PUNCTUATED_REF]], drop_punctuation=True)
    assert_scores(got, 1.0, 1.0, 1.0)


def test_latin_lowercased_numbers_and_hanja_kept():
    text = "ABC 회사 3시 漢字 ㅋㅋ ~"
    assert morphemes(text) == ["abc", "회사", "3", "시", "漢字", "ㅋㅋ", "~"]
    assert morphemes(text, drop_punctuation=True) == ["abc", "회사", "3", "시", "漢字"]


@pytest.mark.parametrize(
    "raw, clean",
    [
        ("</s><s>#Person1#은 내일 간다.</s><pad><pad>", "#Person1#은 내일 간다."),
        ("<s> 안녕  <unk>  하세요 <usr>", "안녕 <unk> 하세요"),
        ("#PhoneNumber#로 <pad>전화해", "#PhoneNumber#로 전화해"),
        ("<pad><pad>", ""),
    ],
)
def test_clean_prediction(raw, clean):
    assert clean_prediction(raw) == clean


def test_check_references_accepts_real_references():
    check_references([[REF], ["", "#Person1#"]])


@pytest.mark.parametrize("drop", [False, True])
@pytest.mark.parametrize("refs", [[], [[]], [[""], ["  ", "\n"]]])
def test_check_references_rejects_empty(refs, drop):
    with pytest.raises(ValueError, match="reference"):
        check_references(refs, drop_punctuation=drop)


def test_check_references_punctuation_only():
    # Scored with punctuation, "..." can match a prediction; without it, it is empty.
    check_references([[""], ["..."]])
    with pytest.raises(ValueError, match="no morphemes"):
        check_references([[""], ["..."]], drop_punctuation=True)


def test_check_references_rejects_silent_tokenizer(monkeypatch):
    monkeypatch.setattr(rouge, "_morphemes_of", lambda texts, drop_punctuation: {t: [] for t in texts})
    with pytest.raises(ValueError, match="no morphemes"):
        check_references([[REF]])


def test_mismatched_lengths_raise():
    with pytest.raises(ValueError, match="2 predictions but 1 reference"):
        korean_rouge([REF, REF], [[REF]])


def test_flat_references_rejected():
    # a plain string would otherwise be scored character by character
    with pytest.raises(ValueError, match="references\\[0\\] is a string"):
        korean_rouge([REF], [REF])


@pytest.mark.parametrize("drop, expected", [(False, (7 / 10, 4 / 9, 7 / 10)), (True, (1.0, 1.0, 1.0))])
def test_training_evaluation_scores_as_the_flag_says(drop, expected):
    """evaluation.Evaluation (the Trainer's compute_metrics) decodes generated ids and scores them
    with or without punctuation, as --rouge_drop_punctuation says."""
    import numpy as np
    from transformers import EvalPrediction, PreTrainedTokenizerFast

    from trainer.run.builtin import train_tokenizer
    from trainer.run.data import Split
    from trainer.run.evaluation import Evaluation

    tokenizer = PreTrainedTokenizerFast(tokenizer_object=train_tokenizer([PUNCTUATED_PRED, PUNCTUATED_REF]),
                                        bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>")
    ids = np.array([tokenizer.encode(PUNCTUATED_PRED)])
    split = Split(ids=["a"], dialogues=["..."], references=[[PUNCTUATED_REF]], source="test")
    evaluation = Evaluation(tokenizer, split, [0], drop_punctuation=drop)
    got = evaluation(EvalPrediction(predictions=ids, label_ids=ids))
    assert evaluation.predictions == {0: PUNCTUATED_PRED}
    assert_scores(got, *expected)
