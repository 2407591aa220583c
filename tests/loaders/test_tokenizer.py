"""Tokenizer, chat prompt and image placeholders, checked on the tiny tokenizer in the released InternLM2 layout.

Expected ids and strings are read from the written JSON files or spelled out here, never taken from the module.
"""

import json
import shutil
import time
from pathlib import Path

import pytest
import sentencepiece as spm

from hovle.default_model.tokenizer_trainer import write_tokenizer_files
from hovle.errors import InputError, TokenizerError
from hovle.loaders.tokenizer import TOKENIZER_FILES, Tokenizer

CHAT = ["<|plugin|>", "<|interpreter|>", "<|action_end|>", "<|action_start|>", "<|im_end|>", "<|im_start|>"]
ADDED = ["<img>", "</img>", "<IMG_CONTEXT>", "<quad>", "</quad>", "<ref>", "</ref>", "<box>", "</box>"]
FILES = ["tokenizer.model", "added_tokens.json", "tokenizer_config.json", "special_tokens_map.json"]
TEXTS = [
    "A red bicycle leans against a brick wall.",
    "  leading and  double spaces, trailing too ",
    "Counting: 12 cups, 3 bowls and 1024 plates\non three shelves\n\nand a tab\there",
    "图片的中间有一辆红色的自行车。",
    "rare symbols fall back to bytes: 🙂 ☃ ∑ Ω",
]


def _json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _broken_copy(tok_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tok_dir, tmp_path / "broken"))


def test_special_ids_come_from_the_files(tok, tok_dir):
    sp = spm.SentencePieceProcessor(model_file=str(tok_dir / "tokenizer.model"))
    size = sp.get_piece_size()
    assert [sp.id_to_piece(i) for i in range(size - 6, size)] == CHAT
    added = _json(tok_dir / "added_tokens.json")
    assert added == {t: size + i for i, t in enumerate(ADDED)}
    config = _json(tok_dir / "tokenizer_config.json")
    by_content = {entry["content"]: int(key) for key, entry in config["added_tokens_decoder"].items()}
    assert {tok.token_id(t) for t in by_content} == set(by_content.values())
    assert all(tok.token_id(t) == i for t, i in by_content.items())
    assert (tok.bos_id, tok.eos_id, tok.unk_id) == (by_content["<s>"], by_content["</s>"], by_content["<unk>"])
    assert tok.pad_id == by_content[config["pad_token"]]
    assert (tok.im_start_id, tok.im_end_id) == (sp.piece_to_id("<|im_start|>"), sp.piece_to_id("<|im_end|>"))
    assert (tok.img_start_id, tok.img_end_id, tok.img_context_id) == (
        added["<img>"],
        added["</img>"],
        added["<IMG_CONTEXT>"],
    )
    extra = _json(tok_dir / "special_tokens_map.json")["additional_special_tokens"]
    assert sorted(extra) == sorted(CHAT + ADDED)
    assert tok.special_ids == frozenset(by_content.values())
    assert tok.vocab_size == size + len(ADDED) == max(added.values()) + 1
    with pytest.raises(TokenizerError, match="<not-a-token>"):
        tok.token_id("<not-a-token>")


@pytest.mark.parametrize("text", TEXTS)
def test_round_trip(tok, text):
    ids = tok.encode(text)
    assert ids[0] == tok.bos_id and tok.bos_id not in ids[1:]
    assert tok.decode(ids) == text


def _reference_encode(tok_dir: Path, text: str) -> list[int]:
    """Independent slow-tokenizer model: scan left to right, take the longest special string starting here."""
    sp = spm.SentencePieceProcessor(model_file=str(tok_dir / "tokenizer.model"))
    config = _json(tok_dir / "tokenizer_config.json")
    specials = {e["content"]: int(k) for k, e in config["added_tokens_decoder"].items()}
    ids, chunk, pos = [sp.piece_to_id(config["bos_token"])], "", 0
    while pos < len(text):
        hits = [s for s in specials if text.startswith(s, pos)]
        if not hits:
            chunk, pos = chunk + text[pos], pos + 1
            continue
        best = max(hits, key=len)
        ids += (sp.encode(chunk) if chunk else []) + [specials[best]]
        chunk, pos = "", pos + len(best)
    return ids + (sp.encode(chunk) if chunk else [])


@pytest.mark.parametrize(
    "text",
    TEXTS
    + [
        "<|im_start|>user\n<img><IMG_CONTEXT><IMG_CONTEXT></img>\nWhat is it?<|im_end|><|im_start|>assistant\n",
        "literal <s> and </s> and <unk> are specials too",
        "half tokens <im <|im_end <IMG_CONTEXT <box>x</box><ref>a cat</ref><quad></quad>",
        "<|plugin|><|interpreter|><|action_start|>call<|action_end|>",
    ],
)
def test_encode_matches_independent_split(tok, tok_dir, text):
    assert tok.encode(text) == _reference_encode(tok_dir, text)


def test_img_context_run_is_exact_and_fast(tok):
    text = "look: <img>" + "<IMG_CONTEXT>" * 5000 + "</img>\nok"
    start = time.perf_counter()
    ids = tok.encode(text, add_bos=False)
    elapsed = time.perf_counter() - start
    first = ids.index(tok.img_start_id)
    assert ids[first + 1 : first + 5001] == [tok.img_context_id] * 5000
    assert ids[first + 5001] == tok.img_end_id
    assert ids.count(tok.img_context_id) == 5000
    assert elapsed < 1.0, f"encoding 5000 <IMG_CONTEXT> took {elapsed:.3f} s"


def test_decode_skips_specials(tok):
    ids = tok.encode("<|im_start|>assistant\nA red ball, two cups.<|im_end|><img><IMG_CONTEXT></img>")
    assert tok.decode(ids) == "assistant\nA red ball, two cups."
    kept = tok.decode(ids, skip_special_tokens=False)
    assert kept == "<s><|im_start|>assistant\nA red ball, two cups.<|im_end|><img><IMG_CONTEXT></img>"
    with pytest.raises(InputError, match="outside the vocabulary"):
        tok.decode([tok.vocab_size])


def test_decode_cleans_up_spaces_like_hf(tok_dir):
    text = "It is red . Is it ? Yes ! Cups , bowls ; I 'm sure it 's one they 've got , we 're told . do n't rock ' n"
    want = "It is red. Is it? Yes! Cups, bowls ; I'm sure it's one they've got, we're told. don't rock'n"
    assert Tokenizer.from_dir(tok_dir).decode(Tokenizer.from_dir(tok_dir).encode(text)) == want
    raw = Tokenizer.from_dir(tok_dir, clean_up_spaces=False)
    assert raw.decode(raw.encode(text)) == text


@pytest.mark.parametrize("name", TOKENIZER_FILES)
def test_missing_file_is_named(tok_dir, tmp_path, name):
    broken = _broken_copy(tok_dir, tmp_path)
    (broken / name).unlink()
    with pytest.raises(TokenizerError, match=name.replace(".", r"\.")):
        Tokenizer.from_dir(broken)


def test_without_added_tokens_json_the_tokens_it_held_are_named(tok_dir, tmp_path):
    """added_tokens.json is optional (XComposer2 has none), but HoVLE's files still name <img> & co. as specials."""
    broken = _broken_copy(tok_dir, tmp_path)
    (broken / "added_tokens.json").unlink()
    with pytest.raises(TokenizerError, match="<IMG_CONTEXT>|<img>|</img>|<quad>|<ref>|<box>"):
        Tokenizer.from_dir(broken)


@pytest.mark.parametrize(
    "make",
    [
        lambda base: "{not json",
        lambda base: '["<img>"]',
        lambda base: json.dumps({t: 5 + i for i, t in enumerate(ADDED)}),  # collides with SentencePiece pieces
        lambda base: json.dumps({t: base + 2 * i for i, t in enumerate(ADDED)}),  # not contiguous
        lambda base: json.dumps({t: str(base + i) for i, t in enumerate(ADDED)}),  # ids are not integers
        lambda base: json.dumps({"<|im_end|>": base}),  # already a SentencePiece piece
    ],
)
def test_corrupt_added_tokens_raise(tok_dir, tmp_path, make):
    broken = _broken_copy(tok_dir, tmp_path)
    base = min(_json(tok_dir / "added_tokens.json").values())
    (broken / "added_tokens.json").write_text(make(base), encoding="utf-8")
    with pytest.raises(TokenizerError, match=r"added_tokens\.json"):
        Tokenizer.from_dir(broken)


def test_corrupt_config_and_model_raise(tok_dir, tmp_path):
    broken = _broken_copy(tok_dir, tmp_path)
    config = _json(broken / "tokenizer_config.json")
    ctx_id = _json(tok_dir / "added_tokens.json")["<IMG_CONTEXT>"]
    config["added_tokens_decoder"][str(ctx_id)]["content"] = "<IMAGE_CTX>"
    (broken / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    with pytest.raises(TokenizerError, match=r"tokenizer_config\.json"):
        Tokenizer.from_dir(broken)
    shutil.copy(tok_dir / "tokenizer_config.json", broken / "tokenizer_config.json")
    (broken / "special_tokens_map.json").write_text(json.dumps({"additional_special_tokens": ["<nope>"]}))
    with pytest.raises(TokenizerError, match="<nope>"):
        Tokenizer.from_dir(broken)
    (broken / "tokenizer.model").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(TokenizerError, match=r"tokenizer\.model"):
        Tokenizer.from_dir(broken)


def test_retraining_is_byte_identical(tok_dir, tmp_path):
    again = tmp_path / "again"
    start = time.perf_counter()
    write_tokenizer_files(again)
    assert time.perf_counter() - start < 5.0
    for name in FILES:
        assert (again / name).read_bytes() == (tok_dir / name).read_bytes(), name


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    with pytest.raises(TokenizerError, match="(?i)vocab"):
        write_tokenizer_files(tmp_path / "too_small", vocab_size=100)

    def refuse(path, clean_up_spaces=True):
        assert (Path(path) / "tokenizer.model").is_file()  # the files were written somewhere before the check
        raise TokenizerError("refused on purpose")

    monkeypatch.setattr(Tokenizer, "from_dir", staticmethod(refuse))
    with pytest.raises(TokenizerError, match="on purpose"):
        write_tokenizer_files(tmp_path / "late_failure")
    assert list(tmp_path.iterdir()) == []


def test_longest_special_wins(tok_dir, tmp_path):
    # "<img" is a prefix of "<img>": the split must take the longer token, as HF's trie does.
    extended = _broken_copy(tok_dir, tmp_path)
    added = _json(tok_dir / "added_tokens.json")
    new_id = max(added.values()) + 1
    (extended / "added_tokens.json").write_text(json.dumps({**added, "<img": new_id}), encoding="utf-8")
    config = _json(tok_dir / "tokenizer_config.json")
    config["added_tokens_decoder"][str(new_id)] = {"content": "<img", "special": True}
    (extended / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    tok = Tokenizer.from_dir(extended)
    text = "<img<img><IMG_CONTEXT></img><img"
    assert tok.encode(text, add_bos=False) == [new_id, added["<img>"], added["<IMG_CONTEXT>"], added["</img>"], new_id]
    assert tok.encode(text) == _reference_encode(extended, text)
