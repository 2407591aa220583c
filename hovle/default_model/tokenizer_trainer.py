"""Training of a small tokenizer in the released InternLM2 layout (tests, the default model, benchmarks).

SentencePiece BPE on a text corpus, the six chat specials appended as user-defined pieces at the top of the
SentencePiece vocabulary, then the nine added tokens in added_tokens.json, exactly as the released files lay them
out; every id is then read back from these files by `hovle.loaders.tokenizer.Tokenizer`.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from pathlib import Path

import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2 as sp_pb2

from ..errors import TokenizerError
from ..loaders.tokenizer import ADDED_TOKENS, CHAT_SPECIALS, Tokenizer

DEFAULT_CORPUS = Path(__file__).parent.parent / "data" / "corpus.txt"
# InternLM2-like SentencePiece settings (BPE, byte fallback, digits split, dummy prefix, no pad piece); one
# thread, no shuffling and no sentence sampling make two runs byte-identical.
_SP_FLAGS = (
    "model_type=bpe byte_fallback=true split_digits=true add_dummy_prefix=true remove_extra_whitespaces=false"
    " normalization_rule_name=identity allow_whitespace_only_pieces=true character_coverage=0.9995 unk_id=0 bos_id=1"
    " eos_id=2 pad_id=-1 num_threads=1 shuffle_input_sentence=false input_sentence_size=0 minloglevel=2"
)


# InternLM2's last six SentencePiece pieces as XComposer2 names them (146 / 145 are its im_start / im_end)
UNUSED_PIECES = tuple(f"[UNUSED_TOKEN_{n}]" for n in range(141, 147))


def _train_sp(corpus: Path, n_pieces: int, specials: tuple[str, ...] = CHAT_SPECIALS) -> bytes:
    lines = [line for line in corpus.read_text(encoding="utf-8").splitlines() if line.strip()]
    buf, flags = io.BytesIO(), dict(flag.split("=") for flag in _SP_FLAGS.split())
    try:
        spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=buf, vocab_size=n_pieces, **flags)
    except RuntimeError as exc:
        raise TokenizerError(f"{corpus}: SentencePiece training failed ({exc})") from exc
    model = sp_pb2.ModelProto()
    model.ParseFromString(buf.getvalue())
    for token in specials:  # as in InternLM2: user-defined pieces at the top of the SentencePiece vocab
        model.pieces.add(piece=token, score=0.0, type=sp_pb2.ModelProto.SentencePiece.USER_DEFINED)
    model.trainer_spec.vocab_size = len(model.pieces)
    return model.SerializeToString(deterministic=True)


def _token_files(sp_size: int) -> dict[str, dict]:
    control = {0: "<unk>", 1: "<s>", 2: "</s>"}
    chat = {sp_size - len(CHAT_SPECIALS) + i: t for i, t in enumerate(CHAT_SPECIALS)}
    added = {t: sp_size + i for i, t in enumerate(ADDED_TOKENS)}
    flags = {"lstrip": False, "normalized": False, "rstrip": False, "single_word": False, "special": True}
    by_id = {**control, **chat, **{i: t for t, i in added.items()}}
    decoder = {str(i): {"content": t, **flags} for i, t in by_id.items()}
    extra = [*reversed(CHAT_SPECIALS), *ADDED_TOKENS]
    names = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "</s>", "unk_token": "<unk>"}
    config = {
        "add_bos_token": True,
        "add_eos_token": False,
        "added_tokens_decoder": decoder,
        "additional_special_tokens": extra,
        "auto_map": {"AutoTokenizer": ["tokenization_internlm2.InternLM2Tokenizer", None]},
        "clean_up_tokenization_spaces": False,
        "model_max_length": 8192,
        "tokenizer_class": "InternLM2Tokenizer",
        **names,
    }
    special_map = {"additional_special_tokens": extra, **names}
    return {"added_tokens.json": added, "tokenizer_config.json": config, "special_tokens_map.json": special_map}


def _xcomposer_files(sp_size: int) -> dict[str, dict]:
    """XComposer2's tokenizer files as InternLM2's: no added tokens; the unused pieces (the last six SentencePiece
    pieces) declared special, so the slow HF tokenizer splits the text on them before SentencePiece."""
    names = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "</s>", "unk_token": "<unk>"}
    flags = {"lstrip": False, "normalized": False, "rstrip": False, "single_word": False, "special": True}
    by_id = {0: "<unk>", 1: "<s>", 2: "</s>"} | {sp_size - 6 + i: t for i, t in enumerate(UNUSED_PIECES)}
    config = {
        "add_bos_token": True,
        "add_eos_token": False,
        "added_tokens_decoder": {str(i): {"content": t, **flags} for i, t in by_id.items()},
        "additional_special_tokens": list(UNUSED_PIECES),
        "auto_map": {"AutoTokenizer": ["tokenization_internlm_xcomposer2.InternLMXComposer2Tokenizer", None]},
        "clean_up_tokenization_spaces": False,
        "model_max_length": 1000000000000000019884624838656,
        "tokenizer_class": "InternLMXComposer2Tokenizer",
        **names,
    }
    return {
        "tokenizer_config.json": config,
        "special_tokens_map.json": {"additional_special_tokens": list(UNUSED_PIECES), **names},
    }


def write_tokenizer_files(
    dst_dir: str | os.PathLike, corpus_path=None, vocab_size: int = 2048, layout: str = "hovle"
) -> Tokenizer:
    """Train a tiny InternLM2-layout tokenizer into dst_dir: layout "hovle" (vocab_size SentencePiece pieces incl.
    the six chat specials, then the nine added tokens) or "xcomposer2" (vocab_size pieces ending with the six
    [UNUSED_TOKEN_141..146] pieces, no added tokens). Files are built and loaded in a temp dir first, so a failure
    leaves dst_dir untouched."""
    corpus = Path(corpus_path) if corpus_path is not None else DEFAULT_CORPUS
    if layout == "xcomposer2":
        model = _train_sp(corpus, vocab_size - len(UNUSED_PIECES), UNUSED_PIECES)
        made = _xcomposer_files(vocab_size)
    else:
        model = _train_sp(corpus, vocab_size - len(CHAT_SPECIALS))
        made = _token_files(vocab_size)
    files = {n: json.dumps(d, ensure_ascii=False, indent=2).encode() for n, d in made.items()}
    files["tokenizer.model"] = model
    dst = Path(dst_dir)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.tmp", dir=dst.parent))
    try:
        for name, data in files.items():
            (tmp / name).write_bytes(data)
        Tokenizer.from_dir(tmp)
        dst.mkdir(exist_ok=True)
        for name in files:
            os.replace(tmp / name, dst / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return Tokenizer.from_dir(dst)
