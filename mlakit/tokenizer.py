"""A character-level tokenizer for the course's synthetic text, with the special tokens of the R1 format.

Every character of the alphabet is one token, and so is each special token:
``<pad>``, ``<bos>``, ``<eos>`` and the reasoning markers ``<think>``,
``</think>``, ``<answer>``, ``</answer>`` used by the GRPO lessons (DeepSeek-R1's
format reward looks for them). A special token is matched as a whole before
single characters, so ``"<think>"`` is one id, never seven.

Saved as JSON (no pickle); a character outside the alphabet raises a
ValueError that names it and its position.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

import torch

SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<think>", "</think>", "<answer>", "</answer>")
DEFAULT_ALPHABET = string.digits + "+-*/=()[]., ?:\n" + string.ascii_lowercase


class CharTokenizer:
    """Characters of ``alphabet`` plus SPECIAL_TOKENS; ids 0..len(SPECIAL_TOKENS)-1 are the specials."""

    def __init__(self, alphabet: str = DEFAULT_ALPHABET, special_tokens: tuple[str, ...] = SPECIAL_TOKENS):
        if len(set(alphabet)) != len(alphabet):
            raise ValueError("alphabet has repeated characters")
        for required in ("<pad>", "<bos>", "<eos>"):
            if required not in special_tokens:
                raise ValueError(f"special_tokens must include {required!r}")
        self.alphabet, self.special_tokens = alphabet, tuple(special_tokens)
        self.itos = list(special_tokens) + list(alphabet)
        self.stoi = {s: i for i, s in enumerate(self.itos)}
        self._specials_longest_first = sorted(special_tokens, key=len, reverse=True)

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    def __len__(self) -> int:
        return self.vocab_size

    def token_id(self, token: str) -> int:
        """The id of one token ("7", "<eos>", "<think>", ...)."""
        if token not in self.stoi:
            raise ValueError(f"{token!r} is not a token of this tokenizer")
        return self.stoi[token]

    @property
    def pad_id(self) -> int:
        return self.stoi["<pad>"]

    @property
    def bos_id(self) -> int:
        return self.stoi["<bos>"]

    @property
    def eos_id(self) -> int:
        return self.stoi["<eos>"]

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        """Token ids of ``text`` (special tokens written out, e.g. "<think>", become one id each)."""
        ids = [self.stoi["<bos>"]] if bos else []
        i = 0
        while i < len(text):
            if text[i] == "<":
                special = next((s for s in self._specials_longest_first if text.startswith(s, i)), None)
                if special is not None:
                    ids.append(self.stoi[special])
                    i += len(special)
                    continue
            ch = text[i]
            if ch not in self.stoi:
                raise ValueError(f"character {ch!r} at position {i} is not in the tokenizer's alphabet "
                                 f"{self.alphabet!r}; extend the alphabet or clean the text")
            ids.append(self.stoi[ch])
            i += 1
        if eos:
            ids.append(self.stoi["<eos>"])
        return ids

    def decode(self, ids, skip_special: bool = False) -> str:
        """Text of ``ids`` (a list or a 1-D tensor); special tokens are written out unless skipped."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        specials = set(self.special_tokens) if skip_special else set()
        return "".join(self.itos[i] for i in ids if self.itos[i] not in specials)

    def encode_batch(self, texts: list[str], bos: bool = True, eos: bool = False,
                     pad_left: bool = True, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """Pad a batch to one length: (ids (B, T), attention mask (B, T) with 1 on real tokens), on ``device``.

        Left padding (the default) lines up the last tokens, which is what
        batched generation needs: every row continues from its final column.
        """
        seqs = [self.encode(t, bos=bos, eos=eos) for t in texts]
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), self.stoi["<pad>"], dtype=torch.long)  # built on the CPU, moved once
        mask = torch.zeros(len(seqs), width, dtype=torch.long)
        for row, s in enumerate(seqs):
            cols = slice(width - len(s), width) if pad_left else slice(0, len(s))
            ids[row, cols] = torch.tensor(s, dtype=torch.long, device="cpu")
            mask[row, cols] = 1
        return ids.to(device), mask.to(device)

    def to_dict(self) -> dict:
        return {"type": "char", "alphabet": self.alphabet, "special_tokens": list(self.special_tokens)}

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2))

    @classmethod
    def load(cls, path: str | Path) -> CharTokenizer:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing (a character tokenizer file, written by CharTokenizer.save)")
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None
        if not isinstance(data, dict) or data.get("type") != "char":
            raise ValueError(f"{path} is not a character tokenizer file")
        return cls(data["alphabet"], tuple(data["special_tokens"]))
