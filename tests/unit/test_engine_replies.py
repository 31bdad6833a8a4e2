"""How the openai engine reads a probe's reply when the server returns text only (SGLang, llama.cpp): the
stop string the server matched is left out of its text, and the reply's own fields say which it was. The
replies are the documented shapes of each server's completions reply; the same path runs against the real
vLLM in tests/integration/test_engine_vllm.py."""
import pytest

from analysis.backend.engine_openai import OpenAIEngine

SMOLLM2 = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def engine():
    from analysis.backend.models import CACHE, load_tokenizer
    if not (CACHE / SMOLLM2).exists():
        pytest.skip("the packaged SmolLM2 is not fetched (python -m analysis models --fetch smollm2-135m-instruct)")
    tok, _, eos = load_tokenizer(SMOLLM2)
    return OpenAIEngine(["http://127.0.0.1:9/v1"], SMOLLM2, tok, eos=eos, token_ids=False)


def reply(text: str, **fields) -> dict:
    return {"choices": [{"text": text, "finish_reason": "stop", "logprobs": {"token_logprobs": [-0.1] * 8},
                         **fields}]}


@pytest.mark.parametrize("fields, text, eos", [
    ({"matched_stop": "}"}, "2\\sqrt{2}", False),      # SGLang: the stop string it matched
    ({"stop_reason": "}"}, "2\\sqrt{2}", False),       # vLLM without return_token_ids
    ({"matched_stop": 2}, "2\\sqrt{2", True),          # SGLang: an end-of-sequence token id
    ({"stop_reason": None}, "2\\sqrt{2", True),        # vLLM: no stop string, so an end of sequence
    ({}, "2\\sqrt{2", False),                          # a server that says neither: the text as it is
])
def test_a_text_only_reply_gets_back_the_stop_string_it_matched(engine, fields, text, eos):
    toks, probs, _, ended = engine.answer_part(reply("2\\sqrt{2", **fields))
    assert engine.tok.decode(toks) == text and ended is eos and len(probs) <= len(toks)


def test_a_reply_with_token_ids_is_read_from_them(engine):
    ids = engine.tok("7}", add_special_tokens=False)["input_ids"]
    toks, _, _, ended = engine.answer_part(reply("7", token_ids=ids, stop_reason="}"))
    assert toks == ids and not ended


def test_a_server_that_keeps_its_stop_strings_gets_the_brace_once(engine):
    toks, _, _, _ = engine.answer_part(reply("2\\sqrt{2}", stop_reason="}"))
    assert engine.tok.decode(toks) == "2\\sqrt{2}"
