"""RULER's 11 synthetic tasks (tasks/ruler/) against RULER's own text and an independent reader of the prompt.

Each prompt is built on the real Qwen3 tokenizer (conftest's hash-pinned copy) at 4K. The template strings below are
typed from RULER's scripts/data/synthetic/constants.py and synthetic.yaml; the answers are recovered from the prompt
text by regular expressions written here (never the generator's code); word keys are checked against wonderwords'
lists directly.
"""

import collections
import json
import re

import pytest

from kvcompress.errors import UserError
from kvcompress.tasks import contract, families, ruler

NIAH = {  # name: (haystack, key type, value type, keys, values per key, keys asked) from synthetic.yaml
    "niah_single_1": ("repeat", "words", "numbers", 1, 1, 1),
    "niah_single_2": ("essay", "words", "numbers", 1, 1, 1),
    "niah_single_3": ("essay", "words", "uuids", 1, 1, 1),
    "niah_multikey_1": ("essay", "words", "numbers", 4, 1, 1),
    "niah_multikey_2": ("needle", "words", "numbers", 1, 1, 1),
    "niah_multikey_3": ("needle", "uuids", "uuids", 1, 1, 1),
    "niah_multivalue": ("essay", "words", "numbers", 1, 4, 1),
    "niah_multiquery": ("essay", "words", "numbers", 4, 1, 4),
}
TOKENS_TO_GENERATE = {**{n: 128 for n in NIAH}, "ruler_vt": 30, "ruler_cwe": 120, "ruler_fwe": 50}
NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
TYPE_RE = {"numbers": r"\d{7}", "uuids": r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}",
           "words": r"[A-Za-z' -]+"}  # wonderwords holds 'e-mail', 'contact lens', 'ad hoc' (RULER too)


def _wonderwords():
    from wonderwords import random_word
    return (set(random_word._get_words_from_text_file("adjectivelist.txt")),
            set(random_word._get_words_from_text_file("nounlist.txt")))


def _niah(name, text, question, prefix, answers):
    haystack, tk, tv, num_k, num_v, num_q = NIAH[name]
    one = num_v * num_q == 1
    v = tv[:-1] if one else tv
    head = (f"A special magic {v} is hidden within the following text. Make sure to memorize it. I will quiz you "
            f"about the {v} afterwards.\n") if one else \
        (f"Some special magic {v} are hidden within the following text. Make sure to memorize it. I will quiz you "
         f"about the {v} afterwards.\n")
    assert text.startswith(head) and text.endswith("\n")
    query = re.fullmatch(rf"What (?:is|are all) the special magic {v} for (.+) mentioned in the provided text\?",
                         question)[1]
    verb = "is" if one else "are"
    assert prefix == f"The special magic {v} for {query} mentioned in the provided text {verb}"
    asked = query.replace(", and ", ", ").split(", ")
    assert len(asked) == num_q
    needles = re.findall(rf"One of the special magic {tv} for ({TYPE_RE[tk]}?) is: ({TYPE_RE[tv]})\.", text)
    by_key = collections.defaultdict(list)
    for k, val in needles:
        by_key[k].append(val)
        assert re.fullmatch(TYPE_RE[tk], k) and re.fullmatch(TYPE_RE[tv], val)
    body = text[len(head):-1]
    if haystack == "needle":
        lines = body.split("\n")
        assert len(lines) == len(needles) > 20  # every line a needle: the haystack is needles
    else:
        assert len(by_key) == max(num_k, num_q) and all(len(vs) == num_v for vs in by_key.values())
        if haystack == "repeat":
            parts = [p.strip() for p in re.findall(r"[^.]+\.", NOISE)]
            allowed = {" ".join(parts[:i]) for i in range(1, 6)}  # RULER's paragraph; the last line may stop early
            assert {line for line in body.split("\n") if "magic" not in line} <= allowed
        else:  # Paul Graham's essays, from their start
            assert "hard liquor, cigarettes, heroin, and crack" in body
    if tk == "words":
        adjs, nouns = _wonderwords()
        for k in by_key:  # some adjective + "-" + some noun (either may hold a hyphen itself)
            assert any(k[:i] in adjs and k[i + 1:] in nouns for i, c in enumerate(k) if c == "-"), k
    for k in asked:
        assert len(by_key[k]) == num_v  # the asked keys are in the text once each (no repeated key)
    return [val for k in asked for val in by_key[k]]


def _vt(text, question, prefix):
    value = re.fullmatch(r"Question: Find all variables that are assigned the value (\d{5}) in the text above\.",
                         question)[1]
    assert prefix == ("Answer: According to the chain(s) of variable assignment in the text above, 5 variables are "
                      f"assgined the value {value}, they are: ")
    instruction = "Memorize and track the chain(s) of variable assignment hidden in the following text."
    assert text.startswith(instruction + " ") and text.count(instruction) == 2  # the solved example, then the task
    real = text.split(instruction)[2]
    assign = dict(re.findall(r"VAR ([A-Z]{5}) = (VAR [A-Z]{5}|\d+)", real))
    assert len(assign) == 5

    def resolve(name):
        v = assign[name]
        return resolve(v[4:]) if v.startswith("VAR ") else v
    return [n for n in assign if resolve(n) == value]


def _cwe(text, question, prefix):
    assert question == "Question: What are the 10 most common words in the above list?"
    assert prefix == "Answer: The top 10 words that appear most often in the list are:"
    instruction = ("Below is a numbered list of words. In these words, some appear more often than others. Memorize "
                   "the ones that appear most often.")
    assert text.startswith(instruction + "\n") and text.count(instruction) == 2
    real = text.split(instruction + "\n")[2].strip()
    items = re.findall(r"(\d+)\. (\S+)", real)
    assert [int(i) for i, _ in items] == list(range(1, len(items) + 1))
    counts = collections.Counter(w for _, w in items).most_common()
    assert counts[9][1] > counts[10][1]  # unambiguous
    assert counts[0][1] == 30 and counts[10][1] == 3  # RULER's freq_cw / freq_ucw at 4K
    return [w for w, _ in counts[:10]]


def _fwe(text, question, prefix):
    assert question == ("Question: Do not provide any explanation. Please ignore the dots '....'. What are the three "
                        "most frequently appeared words in the above coded text?")
    assert prefix == "Answer: According to the coded text above, the three most frequently appeared words are:"
    instruction = ("Read the following coded text and track the frequency of each coded word. Find the three most "
                   "frequently appeared coded words. ")
    assert text.startswith(instruction)
    words = text[len(instruction):].split()
    counts = collections.Counter(w for w in words if w != "...").most_common()
    assert all(re.fullmatch(r"[a-z]{6}", w) for w, _ in counts)
    assert counts[2][1] > counts[3][1]
    return [w for w, _ in counts[:3]]


@pytest.mark.parametrize("name", list(ruler.TASKS))
def test_ruler_prompt_has_rulers_text_and_recoverable_answers(qwen3_tokenizer, name):
    tok, target = qwen3_tokenizer, 4096
    task = families.make(name, 5, 1, target)
    built = contract.build_prompt(tok, target, None, task)
    q = task.questions[0]
    assert task.tokens_to_generate == TOKENS_TO_GENERATE[name]
    budget = target - TOKENS_TO_GENERATE[name]  # RULER: prompt + generated tokens fit the context
    n = built.prompt.input_tokens
    assert n <= budget and (budget - n <= 0.01 * budget or name == "niah_multikey_3"), (n, budget)
    head = tok.decode(built.prompt.context_ids[0])
    assert head.startswith("<|im_start|>user\n")
    text = head[len("<|im_start|>user\n"):]
    tail = tok.decode(built.prompt.question_ids[0])
    assert tail == q.text + "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n" + q.answer_prefix
    if name in NIAH:
        got = _niah(name, text, q.text, q.answer_prefix, q.answers)
    else:
        got = {"ruler_vt": _vt, "ruler_cwe": _cwe, "ruler_fwe": _fwe}[name](text, q.text, q.answer_prefix)
    assert sorted(got) == sorted(q.answers) and q.scorer == "string_match_all"


def test_uuid_needle_haystack_is_within_one_percent_where_a_line_is_finer(qwen3_tokenizer):
    """niah_multikey_3's haystack lines are ~50 tokens: at 4K the prompt is within one line, at 8K within 1 %."""
    built = contract.build_prompt(qwen3_tokenizer, 8192, None, families.make("niah_multikey_3", 5, 1, 8192))
    assert 0 <= 8192 - 128 - built.prompt.input_tokens <= 0.01 * (8192 - 128)


def test_ruler_tasks_fit_small_contexts_or_name_the_smallest(qwen3_tokenizer):
    for name in ruler.TASKS:  # every task fits 1K: RULER's short cwe configuration, the haystack shrinks
        built = contract.build_prompt(qwen3_tokenizer, 1024, None, families.make(name, 2, 1, 1024))
        assert built.prompt.input_tokens <= 1024 - TOKENS_TO_GENERATE[name]
    with pytest.raises(UserError, match=r"ruler_vt needs a context of at least \d+ tokens"):
        contract.build_prompt(qwen3_tokenizer, 400, None, families.make("ruler_vt", 2, 1, 400))


def test_tasks_ruler_selects_the_eleven_and_names_qa_unavailable():
    assert families.parse_tasks("ruler") == list(ruler.TASKS) and len(ruler.TASKS) == 11
    assert families.parse_tasks("cheap,ruler")[:4] == ["niah", "multiquery", "vt", "nolima"]
    with pytest.raises(UserError, match="qa_1 .SQuAD. and qa_2 .HotpotQA.*--qa-data"):
        families.parse_tasks("ruler,qa_2")


@pytest.mark.parametrize("answer,refs,all_,part", [
    ("The numbers are 1234567 and 7654321.", ["1234567", "7654321"], 1.0, 1.0),
    ("only 1234567", ["1234567", "7654321"], 0.5, 1.0),
    ("nothing", ["1234567", "7654321"], 0.0, 0.0),
    ("Mixed CASE: Grumpy-Cat", ["grumpy-cat"], 1.0, 1.0),  # RULER lower-cases both sides
    ("12345678", ["1234567"], 1.0, 1.0),  # RULER's test is a substring test: no word boundary
    ("a b c", ["A", "b", "x", "y"], 0.5, 1.0),
])
def test_scorers_are_rulers_definitions(answer, refs, all_, part):
    """RULER's eval/synthetic/constants.py: string_match_all = mean over refs of [ref.lower() in pred.lower()],
    string_match_part = max of the same; x100 and averaged over predictions in RULER (the tables' score)."""
    assert contract.string_match_all(answer, refs) == all_
    assert contract.string_match_part(answer, refs) == part


def _qa_files(folder):
    """Hand-written files in SQuAD v2 and HotpotQA layout (no third-party data): 3 articles, 6 paragraphs."""
    squad = {"data": [{"title": f"t{a}", "paragraphs": [
        {"context": f"Paragraph {a}-{p}. " + " ".join(f"filler{a}{p}{w}" for w in range(60)) + f" The key of {a}-{p} "
                    f"is gold{a}{p}.",
         "qas": [{"question": f"What is the key of {a}-{p}?", "is_impossible": False,
                  "answers": [{"text": f"gold{a}{p}"}, {"text": f"Gold{a}{p}!"}]},
                 {"question": "Unanswerable?", "is_impossible": True, "answers": []}]}
        for p in range(2)]} for a in range(3)]}
    hotpot = [{"question": f"Who wrote book {i}?", "answer": f"author{i}",
               "context": [[f"Book {i}", [f"Book {i} was written by author{i}. ", "It sold well."]],
                           [f"Other {i}", ["Unrelated text " * 30]]]} for i in range(4)]
    (folder / "squad.json").write_text(json.dumps(squad))
    (folder / "hotpotqa.json").write_text(json.dumps(hotpot))


def test_qa_tasks_from_the_users_files(qwen3_tokenizer, tmp_path, monkeypatch):
    with pytest.raises(UserError, match="pass --qa-data"):
        families.parse_tasks("qa_1")
    _qa_files(tmp_path)
    monkeypatch.setenv("KVCOMPRESS_RULER_QA", str(tmp_path))
    assert families.parse_tasks("ruler,qa_1,qa_2")[-2:] == ["qa_1", "qa_2"]
    instruction = ("Answer the question based on the given documents. Only give me the answer and do not output any "
                   "other words.")
    for name, seed in (("qa_1", 3), ("qa_2", 1)):
        task = families.make(name, seed, 1, 1024)
        built = contract.build_prompt(qwen3_tokenizer, 1024, None, task)
        q = task.questions[0]
        assert q.scorer == "string_match_part" and q.answer_prefix == "Answer:" and task.tokens_to_generate == 32
        assert built.prompt.input_tokens <= 1024 - 32
        text = built.text
        assert text.startswith(instruction + "\n\nThe following are given documents.\n\nDocument 1:\n")
        assert q.text.startswith(instruction + "\n\nQuestion: ")
        docs = re.findall(r"Document (\d+):\n", text)
        assert [int(d) for d in docs] == list(range(1, len(docs) + 1)) and len(docs) >= 2
        if name == "qa_1":  # question 3 of the answerable ones: article 1, paragraph 1; its gold paragraph is there
            assert q.text.endswith("What is the key of 1-1?") and "The key of 1-1 is gold11." in text
            assert q.answers == ["gold11", "Gold11!"]
            assert contract.string_match_part("it is GOLD11", q.answers) == 1.0
        else:
            assert q.text.endswith("Who wrote book 1?") and "Book 1 was written by author1." in text


def test_fit_below_takes_the_largest_size_that_fits(tiny):
    """Against brute force on the byte tokenizer: the prompt of the largest n whose prompt <= target - reserve, with
    seams (every 7th item is longer) so tokens are not a straight line in n; from a cold and from a warm guess."""
    def body(n):
        return " ".join("x" * (5 if i % 7 == 6 else 1) for i in range(n))
    task = contract.TaskContext("fit", [contract.Question("Which?", ["x"])], make_body=body, items_hint=0.9,
                                tokens_to_generate=50, question_separator="", min_items=1)
    for target in (700, 701, 1000, 700):  # the last one starts from the first one's cached n
        budget = target - 50
        sizes = [sum(map(len, contract._render(tiny.tokenizer, task, body(n), False, 0))) for n in range(1, 400)]
        largest = max(n for n, s in zip(range(1, 400), sizes) if s <= budget)
        built = contract.build_prompt(tiny.tokenizer, target, None, task)
        assert built.text == body(largest) and built.prompt.input_tokens == sizes[largest - 1]


@pytest.mark.parametrize("tasks, contexts, refusal", [
    ("ruler", "8K", None),  # prompt + tokens_to_generate <= 8,192: the tiny model's whole window
    ("ruler", "16K", "context 16384 exceeds tiny's 8192 positions"),
    ("ruler,niah", "8K", "context 8192 + 16 new tokens exceeds tiny's 8192 positions"),  # niah answers past it
])
def test_ruler_contexts_count_their_answers_so_the_whole_window_is_offered(tasks, contexts, refusal, tmp_path):
    """RULER sizes each prompt to context - tokens_to_generate and a quality run answers within that budget, so a
    context fits the model where it is at most its positions: the tiny preset's byte tokenizer needs 8K for
    ruler_cwe, and 8K was refused as 8,192 + --max-new-tokens (16) > 8,192."""
    from kvcompress.commands import long_context

    args = long_context.build_parser().parse_args(["--preset", "tiny", "--tasks", tasks, "--contexts", contexts,
                                                   "--samples", "1", "--out", str(tmp_path / "o.json")])
    if refusal is None:
        cfg, cells, _ = long_context._grid(args)
        assert cfg.contexts == [8192] and {c.target_tokens for c in cells} == {8192}
    else:
        with pytest.raises(UserError, match=re.escape(refusal)):
            long_context._grid(args)
