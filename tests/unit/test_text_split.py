"""Long replies split for Discord's 2,000 characters: natural boundaries, code blocks intact."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bots.text import split_message


def test_short_text_is_one_message():
    assert split_message("hello") == ["hello"]
    assert split_message("  ") == []


def test_paragraphs_are_kept_together_when_they_fit():
    paras = [("word " * 60).strip() for _ in range(12)]  # 12 × 299 characters
    chunks = split_message("\n\n".join(paras), 2000)
    assert all(len(c) <= 2000 for c in chunks) and len(chunks) == 2
    assert all(p in chunks[0] or p in chunks[1] for p in paras)
    assert chunks[0].endswith("word")  # cut between paragraphs, not inside one


def test_a_long_paragraph_splits_at_sentences():
    text = " ".join(f"This is sentence number {i}." for i in range(200))
    chunks = split_message(text, 500)
    assert all(len(c) <= 500 for c in chunks)
    assert all(c.endswith(".") for c in chunks)
    assert " ".join(chunks) == text


def test_chinese_sentences_split_after_full_stops():
    text = "这是一个很长的句子，用来测试拆分。" * 100
    chunks = split_message(text, 200)
    assert all(len(c) <= 200 and c.endswith("。") for c in chunks)
    assert "".join(chunks) == text


def test_code_block_is_never_cut_open():
    code = "```python\n" + "\n".join(f"print({i})  # line {i}" for i in range(300)) + "\n```"
    text = "Here is the code:\n\n" + code + "\n\nThat is all."
    chunks = split_message(text, 2000)
    assert all(len(c) <= 2000 for c in chunks)
    for chunk in chunks:
        assert chunk.count("```") % 2 == 0, chunk[:80]
    code_chunks = [c for c in chunks if "print(" in c]
    assert all(c.lstrip().startswith("```python") or "Here is the code" in c for c in code_chunks)
    joined = "\n".join(chunks)
    assert all(f"print({i})" in joined for i in range(300))


def test_a_truncated_code_block_is_closed():
    chunks = split_message("```\nunfinished", 2000)
    assert chunks == ["```\nunfinished\n```"]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(list("ab .。\n`词") + ["\n```\n", "\n```py\n", "\n\n", "word "]),
                max_size=1500).map("".join),
       st.integers(40, 500))
def test_every_chunk_fits_and_nothing_is_lost(text, limit):
    # Fences stand on their own lines, as models write them; a reopened fence repeats its
    # language tag, which the comparison below ignores.
    chunks = split_message(text, limit)
    assert all(0 < len(c) <= limit for c in chunks)
    squash = lambda s: "".join(s.replace("```py", "").replace("`", "").split())  # noqa: E731 - fences may be added
    assert squash("".join(chunks)) == squash(text)


@pytest.mark.parametrize("text", ["````aaaaaaaaaaaaword word word word a",
                                  "````aaaaaaaaaaaa```\n\nword word word a"])
def test_a_fence_with_a_long_info_string_still_fits(text):
    chunks = split_message(text, 40)
    assert all(0 < len(c) <= 40 for c in chunks)
    assert "".join("".join(chunks).replace("`", "").split()) == "".join(text.replace("`", "").split())
