"""Korean ROUGE for the summarizer: morpheme tokens (kiwipiepy) fed to Google's rouge_score.

rouge_score's default tokenizer keeps only [a-z0-9], so every Hangul summary scores 0.
The competition metric is ROUGE-1/2/L F1 on morphemes, averaged over each dialogue's
references, then over dialogues; `rouge_avg` is the mean of the three. It names no analyzer and
says nothing of dropping punctuation, so every morpheme kiwi returns counts; drop_punctuation=True
(--rouge_drop_punctuation) leaves out punctuation and symbols.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from rouge_score import rouge_scorer

ROUGE_KEYS = ("rouge1", "rouge2", "rougeL")

# Speaker / masking tags such as #Person1#, #PhoneNumber#, #Address#.
_TAG = re.compile(r"#[A-Za-z]+[0-9]*#")
# Only the model's special tokens; #Tag# tokens and <unk> are real content.
_SPECIAL = re.compile(r"</s>|<s>|<pad>|<usr>")
# Kiwi tags starting with S are punctuation/symbols, except Latin, numbers and hanja.
# What drop_punctuation drops: S* tags but these.
_KEPT_S_TAGS = {"SL", "SN", "SH"}

_kiwi = None


def _get_kiwi():
    global _kiwi
    if _kiwi is None:  # loading the model takes about a second: only on first use
        from kiwipiepy import Kiwi

        _kiwi = Kiwi()
    return _kiwi


def _tag_spans(text: str) -> list[tuple[int, int, str]]:
    # Handing the tags to kiwi as pre-tokenized proper nouns keeps them whole and lets kiwi
    # read the particle after them in context (split alone, "#Person2#가" yields verb 가 + 어).
    return [(m.start(), m.end(), "NNP") for m in _TAG.finditer(text)]


def _forms(tokens, drop_punctuation: bool) -> list[str]:
    out = []
    for tok in tokens:
        tag = str(tok.tag)
        if drop_punctuation and tag.startswith("S") and tag not in _KEPT_S_TAGS:
            continue
        out.append(tok.form.lower() if tag == "SL" else tok.form)
    return out


def morphemes(text: str, drop_punctuation: bool = False) -> list[str]:
    """Morpheme forms of `text`, #Tag# tokens whole, Latin lowercased (punctuation dropped on request)."""
    return _forms(_get_kiwi().tokenize(text, pretokenized=_tag_spans), drop_punctuation)


def _morphemes_of(texts: Iterable[str], drop_punctuation: bool) -> dict[str, list[str]]:
    """Morphemes of each distinct text, tokenized in one kiwi call."""
    distinct = list(dict.fromkeys(texts))
    if not distinct:
        return {}
    results = _get_kiwi().tokenize(distinct, pretokenized=_tag_spans)
    return {text: _forms(tokens, drop_punctuation) for text, tokens in zip(distinct, results)}


class _CachedTokenizer:
    """The `.tokenize(text)` object rouge_score wants, answering from pre-tokenized texts."""

    def __init__(self, cache: dict[str, list[str]], drop_punctuation: bool):
        self._cache = cache
        self._drop_punctuation = drop_punctuation

    def tokenize(self, text: str) -> list[str]:
        tokens = self._cache.get(text)
        return list(tokens) if tokens is not None else morphemes(text, self._drop_punctuation)


def _check_shape(references: Sequence[Sequence[str]]) -> None:
    for i, refs in enumerate(references):
        if isinstance(refs, str):
            raise ValueError(
                f"references[{i}] is a string; each example needs a list of reference strings"
            )


def per_example_rouge(
    predictions: Sequence[str], references: Sequence[Sequence[str]], drop_punctuation: bool = False
) -> list[dict[str, float]]:
    """Each example's ROUGE-1/2/L F1 on morphemes, averaged over its references, and their rouge_avg."""
    if len(predictions) != len(references):
        raise ValueError(
            f"got {len(predictions)} predictions but {len(references)} reference lists; "
            "they must match one to one"
        )
    if not predictions:
        raise ValueError("no examples to score: predictions and references are empty")
    _check_shape(references)
    for i, refs in enumerate(references):
        if not refs:
            raise ValueError(f"references[{i}] is empty; each example needs a reference")

    cache = _morphemes_of([*predictions, *(r for refs in references for r in refs)], drop_punctuation)
    scorer = rouge_scorer.RougeScorer(list(ROUGE_KEYS), tokenizer=_CachedTokenizer(cache, drop_punctuation))
    rows = []
    for pred, refs in zip(predictions, references):
        row = dict.fromkeys(ROUGE_KEYS, 0.0)
        if pred.strip():  # an empty prediction scores 0 against every reference
            for ref in refs:
                scores = scorer.score(ref, pred)
                for key in ROUGE_KEYS:
                    row[key] += scores[key].fmeasure / len(refs)
        row["rouge_avg"] = sum(row[key] for key in ROUGE_KEYS) / len(ROUGE_KEYS)
        rows.append(row)
    return rows


def mean_rouge(rows: Sequence[dict[str, float]]) -> dict[str, float]:
    """The corpus figures: each metric's mean over the examples (rouge_avg included)."""
    return {key: sum(row[key] for row in rows) / len(rows) for key in (*ROUGE_KEYS, "rouge_avg")}


def korean_rouge(
    predictions: Sequence[str], references: Sequence[Sequence[str]], drop_punctuation: bool = False
) -> dict[str, float]:
    """ROUGE-1/2/L F1 on morphemes, averaged over each example's references, then examples."""
    return mean_rouge(per_example_rouge(predictions, references, drop_punctuation))


def clean_prediction(text: str) -> str:
    """Drop <s>, </s>, <pad>, <usr> from decoded output (keeps #Tag# and <unk>), tidy spaces."""
    return " ".join(_SPECIAL.sub("", text).split())


def check_references(references: Sequence[Sequence[str]], drop_punctuation: bool = False) -> None:
    """Fail loudly if the references could only ever score 0 (none, or no tokens at all)."""
    _check_shape(references)
    texts = [r for refs in references for r in refs]
    if not texts:
        raise ValueError("no references to score against: the reference set is empty")
    if not any(_morphemes_of(texts, drop_punctuation).values()):
        raise ValueError(
            f"all {len(texts)} references tokenize to no morphemes; "
            "ROUGE would be 0 for every prediction (empty references or a broken tokenizer?)"
        )
