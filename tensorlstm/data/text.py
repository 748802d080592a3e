"""Readers of the character-level language-modelling corpora: enwik8, text8, PTB-char, any text file.

Every corpus becomes a `CharCorpus`: three 1-D integer tensors (train/valid/test symbol ids) and the
vocabulary (the symbols, id order). The vocabulary is the sorted set of symbols of all three splits, so
no split has an out-of-vocabulary symbol (for the standard corpora every symbol occurs in train).

* ``enwik8``: the file ``enwik8`` (100,000,000 bytes of English Wikipedia XML, the Hutter Prize file;
  http://mattmahoney.net/dc/enwik8.zip, unzip into data_dir). Byte level; the standard split is the first
  90M bytes / next 5M / last 5M, i.e. fractions 0.9/0.05/0.05 of the file.
* ``text8``: the file ``text8`` (100,000,000 characters, lower-case a-z and space;
  http://mattmahoney.net/dc/text8.zip). Split 90M/5M/5M likewise.
* ``ptb_char``: ``ptb.char.{train,valid,test}.txt`` (Mikolov's PTB character files, e.g. from
  http://www.fit.vutbr.cz/~imikolov/rnnlm/simple-examples.tgz, folder ``data/``). Those files hold one
  sentence per line with the characters separated by spaces and ``_`` marking a word boundary. We map
  each space-separated token to one symbol, ``_`` to a space character, and the end of every line to
  ``\\n``: 49 symbols + newline = the usual 50-symbol PTB-char vocabulary (``<unk>`` stays 5 symbols).
* any other name: a plain text file ``data_dir/<name>``, split 90/5/5 in file order (fractions
  configurable); ``level='char'`` reads it as UTF-8 characters, ``level='byte'`` as raw bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tensorlstm.errors import UserError, why_not_a_dir

STANDARD_SPLIT = (0.9, 0.05, 0.05)  # enwik8 / text8: 90M / 5M / 5M of 100M
BYTE_CORPORA = {
    "enwik8": "http://mattmahoney.net/dc/enwik8.zip (unzip: one 100,000,000-byte file named enwik8)",
    "text8": "http://mattmahoney.net/dc/text8.zip (unzip: one 100,000,000-character file named text8)",
}
PTB_HELP = (
    "ptb.char.train.txt, ptb.char.valid.txt, ptb.char.test.txt (folder data/ of "
    "http://www.fit.vutbr.cz/~imikolov/rnnlm/simple-examples.tgz)"
)


@dataclass
class CharCorpus:
    """Symbol-id streams of the three splits and the vocabulary (list of str, one per id)."""

    train: torch.Tensor
    valid: torch.Tensor
    test: torch.Tensor
    vocab: list[str]
    byte_level: bool = False  # symbols are bytes: decode() joins them and decodes UTF-8

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def split(self, name: str) -> torch.Tensor:
        if name not in ("train", "valid", "test"):
            raise ValueError(f"unknown split {name!r}")
        return getattr(self, name)

    def decode(self, ids) -> str:
        if self.byte_level:
            return bytes(ord(self.vocab[int(i)]) for i in ids).decode("utf-8", errors="replace")
        return "".join(self.vocab[int(i)] for i in ids)


def _ids_dtype(vocab_size: int) -> torch.dtype:
    return torch.uint8 if vocab_size <= 256 else torch.int32


def encode_symbols(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Map integer symbol codes (bytes or code points) to dense ids 0..V-1 (sorted by code).

    Returns (ids, codes_of_vocab). Uses a lookup table, so 100M symbols take about a second.
    """
    if codes.size == 0:
        return codes.astype(np.int64), codes[:0]
    if codes.dtype == np.uint8:
        present = np.bincount(codes, minlength=256) > 0
        vocab_codes = np.flatnonzero(present)
        table = np.zeros(256, dtype=np.uint8)  # ids fit a byte: 100M symbols stay 100 MB
        table[vocab_codes] = np.arange(vocab_codes.size)
        return table[codes], vocab_codes
    vocab_codes, ids = np.unique(codes, return_inverse=True)
    return ids.reshape(-1), vocab_codes


def split_by_fractions(n: int, fractions=STANDARD_SPLIT) -> tuple[int, int]:
    """End offsets of train and valid for a stream of n symbols (test is the rest)."""
    fr = [float(f) for f in fractions]
    if len(fr) != 3 or min(fr) < 0 or abs(sum(fr) - 1.0) > 1e-6:
        raise UserError(
            f"task.split must be three non-negative fractions summing to 1, got {list(fractions)}"
        )
    n_train = int(round(n * fr[0]))
    n_valid = int(round(n * fr[1]))
    return n_train, n_train + n_valid


def _from_codes(codes: np.ndarray, fractions, symbol, byte_level: bool = False) -> CharCorpus:
    ids, vocab_codes = encode_symbols(codes)
    a, b = split_by_fractions(ids.size, fractions)
    if a < 2 or b - a < 2 or ids.size - b < 2:
        raise UserError(
            f"the text has {ids.size} symbols, too few to split {list(fractions)} into train/valid/test; "
            "use a longer file"
        )
    dtype = _ids_dtype(vocab_codes.size)
    t = torch.from_numpy(ids).to(dtype)
    vocab = [symbol(int(c)) for c in vocab_codes]
    return CharCorpus(t[:a].clone(), t[a:b].clone(), t[b:].clone(), vocab, byte_level)


def read_bytes_corpus(path: Path, fractions=STANDARD_SPLIT) -> CharCorpus:
    """Byte-level corpus of one file, split in file order (vocab entries are chr(byte))."""
    codes = np.fromfile(path, dtype=np.uint8)
    return _from_codes(codes, fractions, chr, byte_level=True)


def read_chars_corpus(path: Path, fractions=STANDARD_SPLIT) -> CharCorpus:
    """Character-level corpus of one UTF-8 text file, split in file order."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not UTF-8 text ({e}); set task.level=byte to read it as bytes") from None
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    return _from_codes(codes, fractions, chr)


def ptb_char_symbols(text: str) -> str:
    """PTB-char file text -> the character stream: tokens are space-separated, `_` is a space,
    every line ends with a newline."""
    return "".join(
        "".join(" " if tok == "_" else tok for tok in line.split()) + "\n" for line in text.splitlines()
    )


def read_ptb_char(data_dir: Path) -> CharCorpus:
    streams = []
    for split in ("train", "valid", "test"):
        path = data_dir / f"ptb.char.{split}.txt"
        if not path.is_file():
            raise UserError(
                f"PTB-char file {path} not found: task.dataset=ptb_char expects {PTB_HELP} in task.data_dir"
            )
        streams.append(ptb_char_symbols(path.read_text(encoding="utf-8")))
    lens = [len(s) for s in streams]
    codes = np.frombuffer("".join(streams).encode("utf-32-le"), dtype=np.uint32)
    ids, vocab_codes = encode_symbols(codes)
    t = torch.from_numpy(ids).to(_ids_dtype(vocab_codes.size))
    a, b = lens[0], lens[0] + lens[1]
    return CharCorpus(t[:a].clone(), t[a:b].clone(), t[b:].clone(), [chr(int(c)) for c in vocab_codes])


def load_char_corpus(
    data_dir: str | Path, dataset: str, level: str = "char", fractions=STANDARD_SPLIT
) -> CharCorpus:
    """Load `dataset` (enwik8 | text8 | ptb_char | <file name>) from `data_dir`."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise UserError(
            f"char_lm data directory {data_dir} {why_not_a_dir(data_dir)}: set task.data_dir to the folder holding "
            f"{_expected(dataset)}"
        )
    if dataset == "ptb_char":
        return read_ptb_char(data_dir)
    path = data_dir / dataset
    if not path.is_file():
        raise UserError(
            f"char_lm: {path} not found; task.dataset={dataset} expects {_expected(dataset)} in task.data_dir"
        )
    if dataset in BYTE_CORPORA:
        # enwik8 is byte-level by definition; text8 is ASCII, so bytes == characters
        return read_bytes_corpus(path, fractions)
    if level == "byte":
        return read_bytes_corpus(path, fractions)
    if level != "char":
        raise UserError(f"task.level must be char or byte, got {level!r}")
    return read_chars_corpus(path, fractions)


def _expected(dataset: str) -> str:
    if dataset == "ptb_char":
        return PTB_HELP
    if dataset in BYTE_CORPORA:
        return f"the file {dataset!r} from {BYTE_CORPORA[dataset]}"
    return (
        f"a plain text file named {dataset!r} (or set task.dataset to enwik8, text8, ptb_char or the name "
        f"of a text file there)"
    )
