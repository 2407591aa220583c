"""InternLM2 tokenizer (SentencePiece + added tokens), the "internlm2-chat" prompt, and image placeholders.

Matches the slow HF InternLM2Tokenizer used by HoVLE: the text is split on every special/added token string,
those map straight to their ids, every other chunk is encoded on its own by SentencePiece, BOS is prepended.
Every special id is read from the checkpoint's files, so the same code serves the released 92553-token
vocabulary and the small ones written by `hovle.default_model.tokenizer_trainer` (tests, the default model).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import sentencepiece as spm

from hovle.errors import InputError, TokenizerError
from hovle.loaders.json_file import read_json

TOKENIZER_FILES = ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json")  # + added_tokens.json if any
IMAGE_PLACEHOLDER = "<image>"
IMG_START, IMG_END, IMG_CONTEXT = "<img>", "</img>", "<IMG_CONTEXT>"
# Order of the released files: the chat specials are the last six SentencePiece pieces, the image/grounding
# tokens follow the SentencePiece vocabulary in added_tokens.json.
CHAT_SPECIALS = ("<|plugin|>", "<|interpreter|>", "<|action_end|>", "<|action_start|>", "<|im_end|>", "<|im_start|>")
ADDED_TOKENS = (IMG_START, IMG_END, IMG_CONTEXT, "<quad>", "</quad>", "<ref>", "</ref>", "<box>", "</box>")
# HF's clean_up_tokenization, which InternLM2Tokenizer runs on every decode, in its order: " X" -> "X" for each
# X, except " ' " -> "'".
_CLEANUPS = (".", "?", "!", ",", "' ", "n't", "'m", "'s", "'ve", "'re")


def _load_sp(path: Path) -> spm.SentencePieceProcessor:
    try:
        return spm.SentencePieceProcessor(model_proto=path.read_bytes())
    except (OSError, RuntimeError, TypeError) as exc:
        raise TokenizerError(f"{path}: not a valid SentencePiece model ({exc})") from exc


def _content(value) -> str | None:
    """A token field is a plain string, an AddedToken dict ({"content": ...}) or null."""
    return value.get("content") if isinstance(value, dict) else value


def _check_added(path: Path, added: dict, sp: spm.SentencePieceProcessor) -> dict[str, int]:
    size = sp.get_piece_size()
    for token, idx in added.items():
        if type(idx) is not int:
            raise TokenizerError(f"{path}: id of {token!r} must be an integer, got {idx!r}")
        if idx < size:
            raise TokenizerError(f"{path}: {token!r} id {idx} collides with SentencePiece {sp.id_to_piece(idx)!r}")
        if sp.piece_to_id(token) != sp.unk_id():
            raise TokenizerError(f"{path}: {token!r} is already SentencePiece piece {sp.piece_to_id(token)}")
    if sorted(added.values()) != list(range(size, size + len(added))):
        raise TokenizerError(f"{path}: ids must run contiguously from {size} (SentencePiece size), got {added}")
    return dict(added)


def _check_utf8(text: str) -> None:
    """Lone surrogates (undecodable bytes in a command line, broken JSON escapes) cannot be encoded as UTF-8."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InputError(
            f"the text is not valid Unicode: {exc.reason} at character {exc.start} "
            f"({text[max(0, exc.start - 10) : exc.start]!r} then {text[exc.start]!r})"
        ) from None


class Tokenizer:
    """SentencePiece pieces 0..sp_size-1 followed by the added tokens sp_size..vocab_size-1."""

    def __init__(self, path: str | os.PathLike, clean_up_spaces: bool = True, control_tokens: tuple[str, ...] = ()):
        root = self._root = Path(path)
        missing = [name for name in TOKENIZER_FILES if not (root / name).is_file()]
        if missing:
            raise TokenizerError(f"{root}: missing tokenizer file(s): {', '.join(missing)}")
        self._sp = _load_sp(root / "tokenizer.model")
        self.sp_size = self._sp.get_piece_size()
        added = read_json(root / "added_tokens.json", TokenizerError) if (root / "added_tokens.json").is_file() else {}
        self._added = _check_added(root / "added_tokens.json", added, self._sp)
        self._id_to_added = {idx: token for token, idx in self._added.items()}
        self.vocab_size = self.sp_size + len(self._added)
        self.clean_up_spaces = clean_up_spaces
        config = read_json(root / "tokenizer_config.json", TokenizerError)
        self.add_bos_token = bool(config.get("add_bos_token", True))
        self.add_eos_token = bool(config.get("add_eos_token", False))
        self._check_decoder(config.get("added_tokens_decoder", {}))
        self._resolve_specials(config, read_json(root / "special_tokens_map.json", TokenizerError), control_tokens)

    @classmethod
    def from_dir(cls, path: str | os.PathLike, clean_up_spaces: bool = True, control_tokens=()) -> Tokenizer:
        """Load tokenizer.model, tokenizer_config.json, special_tokens_map.json and added_tokens.json (when the
        release has one). control_tokens: a family's template tokens that must be in the vocabulary and are
        treated as special (user text spells them out) even where the files do not mark them."""
        return cls(path, clean_up_spaces, tuple(control_tokens))

    def _check_decoder(self, decoder: dict) -> None:
        where = self._root / "tokenizer_config.json"
        for key, entry in decoder.items():
            if not key.isdigit():
                raise TokenizerError(f"{where}: added_tokens_decoder key {key!r} is not a token id")
            idx = int(key)
            actual = self._id_to_added.get(idx) if idx >= self.sp_size else self._sp.id_to_piece(idx)
            if actual != _content(entry):
                raise TokenizerError(f"{where}: added_tokens_decoder[{key!r}] = {entry!r}, vocab has {actual!r}")

    def _resolve_specials(self, config: dict, special_map: dict, control_tokens: tuple[str, ...]) -> None:
        keys = ("bos_token", "eos_token", "unk_token", "pad_token")
        names = {key: _content(config.get(key)) or _content(special_map.get(key)) for key in keys}
        self.bos_id, self.eos_id, self.unk_id, self.pad_id = (self._file_id(names[k], k) for k in keys)
        extra = (special_map.get("additional_special_tokens") or []) + (config.get("additional_special_tokens") or [])
        specials = {_content(t) for t in [*names.values(), *extra, *config.get("added_tokens_decoder", {}).values()]}
        specials = (specials - {None}) | set(self._added) | set(control_tokens)
        self._special_to_id = {t: self._file_id(t, "additional_special_tokens") for t in specials}
        self.special_ids = frozenset(self._special_to_id.values())
        # Longest first so a token never loses to a shorter one sharing its start; the capture group keeps the
        # matched specials in re.split's output, at the odd positions.
        ordered = sorted(specials, key=lambda t: (-len(t), t))
        self._split_re = re.compile("(" + "|".join(map(re.escape, ordered)) + ")")

    def _file_id(self, token: str | None, key: str) -> int | None:
        where = f"{self._root}: {key} (tokenizer_config.json / special_tokens_map.json)"
        if token is None and key == "pad_token":
            return None  # InternLM2 sets pad = eos, but inference never needs a pad token
        if token is None:
            raise TokenizerError(f"{where} is not set")
        try:
            return self.token_id(token)
        except TokenizerError as exc:
            raise TokenizerError(f"{where}: {exc}") from exc

    def token_id(self, text: str) -> int:
        """Id of one token string (an added token or a SentencePiece piece)."""
        if text in self._added:
            return self._added[text]
        idx = self._sp.piece_to_id(text) if isinstance(text, str) else self._sp.unk_id()
        if idx == self._sp.unk_id() and self._sp.id_to_piece(idx) != text:
            raise TokenizerError(f"token {text!r} is not in the vocabulary")
        return idx

    def id_to_token(self, idx: int) -> str:
        return self._id_to_added[idx] if idx >= self.sp_size else self._sp.id_to_piece(idx)

    im_start_id = property(lambda self: self.token_id("<|im_start|>"))
    im_end_id = property(lambda self: self.token_id("<|im_end|>"))
    img_start_id = property(lambda self: self.token_id(IMG_START))
    img_end_id = property(lambda self: self.token_id(IMG_END))
    img_context_id = property(lambda self: self.token_id(IMG_CONTEXT))

    def encode(self, text: str, add_bos: bool | None = None) -> list[int]:
        """Token ids of `text`; add_bos=None follows add_bos_token of tokenizer_config.json (true for InternLM2)."""
        if not isinstance(text, str):
            raise InputError(f"text to encode must be a str, got {type(text).__name__}")
        _check_utf8(text)
        ids = [self.bos_id] if (self.add_bos_token if add_bos is None else add_bos) else []
        # re.split with one capture group alternates plain chunk / matched special, starting with a chunk.
        for i, chunk in enumerate(self._split_re.split(text)):
            if i % 2:
                ids.append(self._special_to_id[chunk])
            elif chunk:
                ids.extend(self._sp.encode(chunk))
        if self.add_eos_token:
            ids.append(self.eos_id)
        return ids

    def encode_text(self, text: str) -> list[int]:
        """`text` as literal characters: no special token is recognised, not even one SentencePiece itself would
        match (the chat specials are user-defined pieces of its vocabulary); those spell out char by char."""
        _check_utf8(text)
        ids = []
        for idx in self._sp.encode(text):
            ids.extend(self._literal(idx) if idx in self.special_ids else (idx,))
        return ids

    def _literal(self, idx: int) -> list[int]:
        """A special token's string as ordinary pieces: one per character, or its UTF-8 byte pieces."""
        out = []
        for ch in self.id_to_token(idx):
            piece = self._sp.piece_to_id(ch)
            if self._sp.id_to_piece(piece) == ch and piece not in self.special_ids and not self._sp.is_control(piece):
                out.append(piece)
            else:
                out += [self._byte_piece(b) for b in ch.encode("utf-8")]
        return out

    def _byte_piece(self, byte: int) -> int:
        piece = self._sp.piece_to_id(f"<0x{byte:02X}>")
        if not self._sp.is_byte(piece):
            raise TokenizerError(f"{self._root}: no byte-fallback piece for 0x{byte:02X}; cannot spell text literally")
        return piece

    def encode_prompt(self, segments, image_tokens: list[int], add_bos: bool | None = None) -> list[int]:
        """Ids of a prompt built as segments (hovle/prompt.py): runs of text encoded literally as one piece of
        text, Special segments as their ids, ImageSlot i as <img> + IMG_CONTEXT x image_tokens[i] + </img>."""
        ids = [self.bos_id] if (self.add_bos_token if add_bos is None else add_bos) else []
        text: list[str] = []
        for seg in [*segments, None]:
            if isinstance(seg, str):
                text.append(seg)
                continue
            if text:
                ids += self.encode_text("".join(text))
                text = []
            if seg is None:
                break
            if hasattr(seg, "token"):
                ids.append(self._special_to_id[seg.token])
            else:
                ids += [self.img_start_id] + [self.img_context_id] * image_tokens[seg.index] + [self.img_end_id]
        if self.add_eos_token:
            ids.append(self.eos_id)
        return ids

    def decode(self, ids, skip_special_tokens: bool = True, unknown: str = "raise") -> str:
        """Text of `ids`; kept special and added tokens are written out as their token strings. An id outside the
        vocabulary raises InputError, or with unknown="skip" contributes no text (what a generation does: the
        engine never selects such ids, and a model id the tokenizer lacks must not end a generation)."""
        parts, run = [], []
        for idx in map(int, ids):
            if not 0 <= idx < self.vocab_size:
                if unknown == "skip":
                    continue
                raise InputError(f"token id {idx} is outside the vocabulary [0, {self.vocab_size})")
            if idx in self.special_ids and skip_special_tokens:
                continue
            if idx in self.special_ids or idx >= self.sp_size:
                parts += [self._sp.decode(run), self.id_to_token(idx)]
                run = []
            else:
                run.append(idx)
        text = "".join(parts) + self._sp.decode(run)
        if self.clean_up_spaces:
            for token in _CLEANUPS:
                text = text.replace(" " + token, token.rstrip())
        return text
