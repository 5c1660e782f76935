"""Official answer normalisation and scoring of VQA v2, GQA and POPE (pure functions, no I/O).

Written from the rules of the official evaluators, not copied from them:

* VQA v2: GT-Vision-Lab ``vqaEval.py`` (last revision, "Fixed processing answers bug"):
  human answers and the prediction have newlines/tabs turned into spaces and are stripped;
  only when the 10 human answers are not all identical are both run through the answer
  normalisation (punctuation, then number words / articles / contractions). Accuracy is the
  mean over the 10 human answers of ``min(1, matches among the other 9 / 3)``.
  LLaVA-1.5 runs each prediction through the EvalAI answer processor before submitting
  (:func:`llava_vqa_prediction`), so a prediction is normalised even when the humans agree.
* GQA: ``eval.py`` compares the prediction with the gold ``answer`` by string equality;
  LLaVA-1.5 first applies ``rstrip('.').lower()`` to its (stripped) output.
* POPE: ``evaluate.py`` keeps the text before the first period, removes commas, splits on
  single spaces and answers "no" when a word is exactly ``No``, ``not`` or ``no`` (case
  sensitive: "NO" and "Not sure" parse as "yes"), else "yes".
"""

from __future__ import annotations

import re
from typing import Sequence

# --------------------------------------------------------------------------- VQA v2

#: characters the official evaluator removes (next to a space, or anywhere when the text has a
#: digit-comma-digit) or replaces by a space (otherwise); order does not matter because each
#: decision looks at the original text.
PUNCTUATION = ";/[]\"{}()=+\\_-><@`,?!"
_DIGIT_COMMA_DIGIT = re.compile(r"\d,\d")
#: a period not followed by a digit (the official pattern's leading ``(?!<=\d)`` is a lookahead
#: that can never fail in front of a period, so it adds nothing)
_PERIOD = re.compile(r"\.(?!\d)")
#: the official code passes ``re.UNICODE`` (= 32) as ``sub``'s positional *count*, so at most
#: 32 periods are removed; kept for fidelity
_PERIOD_COUNT = 32

NUMBER_WORDS = dict(zip("none zero one two three four five six seven eight nine ten".split(), "0 0 1 2 3 4 5 6 7 8 9 10".split()))
ARTICLES = frozenset({"a", "an", "the"})

#: contracted forms the evaluator restores; an answer word matching one of these with exactly one
#: apostrophe left out is replaced by it (``dont`` -> ``don't``, ``couldnt've`` -> ``couldn't've``).
_CONTRACTED = """
ain't aren't can't could've couldn't couldn't've didn't doesn't don't hadn't hadn't've hasn't haven't
he'd he'd've he's how'd how'll how's isn't it'd it'd've it'll ma'am mightn't mightn't've might've
mustn't must've needn't not've o'clock oughtn't 'ow's'at shan't she'd've should've shouldn't
shouldn't've somebody'd've somebody'll somebody's someone'd someone'd've someone'll someone's
something'd something'd've something'll that's there'd there'd've there're there's they'd they'd've
they'll they're they've 'twas wasn't we'd've we've weren't what'll what're what's what've when's
where'd where's where've who'd who'd've who'll who's who've why'll why're why's won't would've
wouldn't wouldn't've y'all y'all'll y'all'd've you'd you'd've you'll you're you've
""".split()


def _contraction_map() -> dict[str, str]:
    table = {}
    for form in _CONTRACTED:
        cuts = [i for i, ch in enumerate(form) if ch == "'"]
        for i in cuts:
            table[form[:i] + form[i + 1 :]] = form
    # The official table also maps "somebody'd" the wrong way round (to "somebodyd"); its
    # entries for "I'm", "I've", "I'd've" have capitalised keys that never match lowercased
    # text, and "let's" / "she's" map to themselves, so those are left out here.
    table["somebody'd"] = "somebodyd"
    return table


CONTRACTIONS = _contraction_map()


def process_punctuation(text: str) -> str:
    """The official punctuation step (see :data:`PUNCTUATION` and :data:`_PERIOD`)."""
    remove_all = _DIGIT_COMMA_DIGIT.search(text) is not None
    out = text
    for p in PUNCTUATION:
        spaced = (p + " ") in text or (" " + p) in text
        out = out.replace(p, "" if (remove_all or spaced) else " ")
    return _PERIOD.sub("", out, count=_PERIOD_COUNT)


def process_digit_article(text: str) -> str:
    """Lower-case, number words to digits, drop articles, restore contractions; single spaces."""
    words = []
    for word in text.lower().split():
        word = NUMBER_WORDS.get(word, word)
        if word not in ARTICLES:
            words.append(CONTRACTIONS.get(word, word))
    return " ".join(words)


def normalise_vqa(text: str) -> str:
    """The official evaluator's answer normalisation (punctuation, then digits/articles)."""
    return process_digit_article(process_punctuation(text))


def _clean_whitespace(text: str) -> str:
    return text.replace("\n", " ").replace("\t", " ").strip()


def llava_vqa_prediction(text: str) -> str:
    """The EvalAI answer processor LLaVA-1.5 applies to each VQA v2 prediction before submission:
    lower-case, drop ``,`` and ``?``, split off ``'s``, then the official normalisation."""
    text = text.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    return normalise_vqa(_clean_whitespace(text))


def vqa_accuracy(prediction: str, human_answers: Sequence[str], *, llava_prediction: bool = True) -> float:
    """Official VQA accuracy of one prediction against the human answers (normally 10).

    Each human answer is left out in turn; the prediction scores ``min(1, matches among the
    others / 3)``; the result is the mean. ``llava_prediction`` first applies
    :func:`llava_vqa_prediction` to the prediction, as LLaVA-1.5's evaluation does.
    """
    if not human_answers:
        raise ValueError("VQA accuracy needs at least one human answer")
    pred = _clean_whitespace(prediction)
    if llava_prediction:
        pred = llava_vqa_prediction(pred)
    gold = [_clean_whitespace(a) for a in human_answers]
    if len(set(gold)) > 1:
        gold = [normalise_vqa(a) for a in gold]
        pred = normalise_vqa(pred)
    hits = [g == pred for g in gold]
    matches = sum(hits)
    return sum(min(1.0, (matches - hit) / 3) for hit in hits) / len(hits)


# --------------------------------------------------------------------------- GQA


def gqa_prediction(text: str) -> str:
    """LLaVA-1.5's GQA prediction processing: strip, drop trailing periods, lower-case."""
    return text.strip().rstrip(".").lower()


def gqa_correct(prediction: str, gold: str) -> bool:
    """GQA eval.py: the processed prediction equals the gold answer (gold is not processed)."""
    return gqa_prediction(prediction) == gold


# --------------------------------------------------------------------------- POPE

_POPE_NO_WORDS = frozenset({"No", "not", "no"})


def pope_answer(text: str) -> str:
    """POPE's answer parsing: ``"no"`` or ``"yes"`` (see the module docstring)."""
    first = text.split(".", 1)[0].replace(",", "")
    return "no" if _POPE_NO_WORDS.intersection(first.split(" ")) else "yes"
