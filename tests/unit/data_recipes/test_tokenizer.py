"""The offline Llama-3.1 tokenizer: exact ids, Hermes tags, no double BOS, saved files."""

from __future__ import annotations

import json

import pytest
import tiktoken
from hypothesis import given, settings
from hypothesis import strategies as st
from tiktoken.load import load_tiktoken_bpe
from transformers import AutoTokenizer

from data_recipes import tokenizer as T


@pytest.fixture(scope="module")
def reference_tiktoken():
    """tiktoken itself on the same file: the ground truth the converted tokenizer must match."""
    ranks = load_tiktoken_bpe(str(T._llama_models_tiktoken_file()))
    specials = {name: T.NUM_BPE_RANKS + i for i, name in enumerate(T.llama31_special_tokens())}
    by_id = {i: name for name, i in specials.items()}
    for tag, tag_id in T.HERMES_TAGS.items():  # the same token set as ours: tags replace reserved names
        del specials[by_id[tag_id]]
        specials[tag] = tag_id
    return tiktoken.Encoding(
        "llama3", pat_str=T.LLAMA3_PATTERN, mergeable_ranks=ranks, special_tokens=specials
    )


def test_vocab_and_llama31_special_ids(tokenizer):
    assert len(tokenizer) == T.VOCAB_SIZE == 128_256
    ids = tokenizer.convert_tokens_to_ids
    assert ids("<|begin_of_text|>") == 128000
    assert ids("<|end_of_text|>") == 128001
    assert ids("<|finetune_right_pad_id|>") == 128004
    assert (ids("<|start_header_id|>"), ids("<|end_header_id|>")) == (128006, 128007)
    assert (ids("<|eom_id|>"), ids("<|eot_id|>"), ids("<|python_tag|>")) == (128008, 128009, 128010)
    assert ids("<|reserved_special_token_3|>") == 128011
    assert ids("<|reserved_special_token_247|>") == 128255
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (
        128000,
        128009,
        128004,
    )


def test_golden_ids_and_no_implicit_bos(tokenizer):
    # llama-models' own test sentence (ids without the BOS, which our tokenizer never adds itself).
    assert tokenizer("This is a test sentence.")["input_ids"] == [2028, 374, 264, 1296, 11914, 13]
    rendered = "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
    ids = tokenizer(rendered, add_special_tokens=True)["input_ids"]
    assert ids == [128000, 128006, 882, 128007, 271, 13347, 128009]
    assert ids.count(T.BOS_ID) == 1


TEXTS = [
    "def f(x):\n    return x ** 2  # square\n\n\n",
    "中文分词测试，日本語のテキスト、한국어 문장.",
    "مرحبا بالعالم — Привет, мир! 🤖🚀 ümlaut café naïve",
    "   leading spaces\t\ttabs\r\nCRLF   trailing   ",
    "1234567890 3.14159 -42 1e-5 0x1F",
    "I'm, you're, they'll, we'd, it's — contractions'S 'LL",
    '{"name": "get_weather", "arguments": {"city": "Paris"}}',
]


@pytest.mark.parametrize("text", TEXTS)
def test_matches_tiktoken_exactly(tokenizer, reference_tiktoken, text):
    assert tokenizer(text)["input_ids"] == reference_tiktoken.encode(text, allowed_special="all")
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=20),
            st.sampled_from(["<|eot_id|>", "<think>", "</tool_call>", " \n\n", "'s", "123456"]),
        ),
        max_size=6,
    ).map("".join)
)
def test_matches_tiktoken_on_random_text(tokenizer, reference_tiktoken, text):
    assert tokenizer(text)["input_ids"] == reference_tiktoken.encode(text, allowed_special="all")


def test_hermes_tags_are_single_non_special_tokens(tokenizer):
    for tag, tag_id in T.HERMES_TAGS.items():
        assert tokenizer(tag)["input_ids"] == [tag_id]
    ids = tokenizer("<think>\nhm\n</think>\n<tool_call>\n{}\n</tool_call><|eot_id|>")["input_ids"]
    assert ids[0] == T.THINK_OPEN_ID and T.THINK_CLOSE_ID in ids and ids[-1] == T.EOT_ID
    # Servers decode with skip_special_tokens=True; vLLM's hermes parser must still see the tags.
    assert (
        tokenizer.decode(ids, skip_special_tokens=True)
        == "<think>\nhm\n</think>\n<tool_call>\n{}\n</tool_call>"
    )


def test_local_base_tokenizer_gets_the_same_additions(tmp_path, tokenizer):
    base = T.build_base_tokenizer_json()  # what a downloaded Llama-3.1 tokenizer.json looks like (names, ids)
    (tmp_path / "tokenizer.json").write_text(json.dumps(base))
    local = T.load_tokenizer(tmp_path)
    assert T.tokenizer_fingerprint(local) == T.tokenizer_fingerprint(tokenizer)
    assert (
        local("<tool_call>x</tool_call>")["input_ids"] == tokenizer("<tool_call>x</tool_call>")["input_ids"]
    )


def test_rejects_a_tokenizer_that_is_not_llama31(tmp_path):
    base = T.build_base_tokenizer_json()
    victim = next(e for e in base["added_tokens"] if e["id"] == 128009)
    victim["content"] = "<|im_end|>"
    (tmp_path / "tokenizer.json").write_text(json.dumps(base))
    with pytest.raises(ValueError, match=r"tokenizer.json: id 128009 is '<\|im_end\|>'"):
        T.load_tokenizer(tmp_path)
    with pytest.raises(ValueError, match=r"no tokenizer\.json"):
        T.load_tokenizer(tmp_path / "missing")


def test_saved_folder_carries_the_template_byte_for_byte(tmp_path, tokenizer):
    out = T.save_tokenizer(tokenizer, tmp_path / "tok")
    template = T.TEMPLATE_PATH.read_bytes()
    assert (out / "chat_template.jinja").read_bytes() == template
    config = json.loads((out / "tokenizer_config.json").read_text())
    assert config["chat_template"].encode() == template
    assert config["add_bos_token"] is False
    reloaded = AutoTokenizer.from_pretrained(out)
    msgs = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    assert reloaded.apply_chat_template(
        msgs, tokenize=True, return_dict=False
    ) == tokenizer.apply_chat_template(msgs, tokenize=True, return_dict=False)
    assert len(reloaded) == 128_256
    assert not list(tmp_path.glob("*.tmp-*")), "temporary folder left behind"
