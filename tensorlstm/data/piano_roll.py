"""Reader of the polyphonic-music pickles (Boulanger-Lewandowski et al. 2012) as 88-key piano rolls.

Layout of ``<data_dir>/<dataset>.pickle`` (JSB_Chorales, Nottingham, MuseData, Piano-midi.de; from
http://www-etud.iro.umontreal.ca/~boulanni/icml2012): a dict ``{'train', 'valid', 'test'}`` -> list of
sequences -> list of time steps -> tuple (or list) of the MIDI pitches sounding at that step, 21..108
(A0..C8, the 88 piano keys). Key k of the roll is MIDI pitch 21 + k.

A split is stored packed: all frames of all sequences in one (total_frames, 88) uint8 tensor plus each
sequence's offset and length, so a padded batch is one vectorized gather (`PianoRolls.batch`).
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from tensorlstm.errors import UserError

LOWEST_PITCH = 21  # A0
NUM_KEYS = 88  # 21..108
DATASETS = ("JSB_Chorales", "Nottingham", "MuseData", "Piano-midi.de")
SOURCE = "http://www-etud.iro.umontreal.ca/~boulanni/icml2012 (the four .pickle files)"
LAYOUT = "a pickle of {'train','valid','test'} -> sequences -> steps -> tuple of MIDI pitches 21..108"


@dataclass
class PianoRolls:
    """One split: frames (F, 88) uint8 of all sequences back to back, offsets (N,) and lengths (N,) int64."""

    frames: torch.Tensor
    offsets: torch.Tensor
    lengths: torch.Tensor
    _with_silence: torch.Tensor | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return int(self.lengths.numel())

    @property
    def num_frames(self) -> int:
        return int(self.lengths.sum())

    def batch(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Padded rolls (B, T_max, 88) uint8 (zero past each length) and lengths (B,) of sequences `index`."""
        if self._with_silence is None:  # frames + one silent frame at the end, which padding points to
            self._with_silence = torch.cat([self.frames, self.frames.new_zeros(1, NUM_KEYS)])
        lengths = self.lengths.index_select(0, index)
        t_max = int(lengths.max()) if lengths.numel() else 0
        steps = torch.arange(t_max)
        valid = steps.unsqueeze(0) < lengths.unsqueeze(1)  # (B, T)
        start = self.offsets.index_select(0, index).unsqueeze(1)
        rows = torch.where(valid, start + steps.unsqueeze(0), len(self.frames))
        # one gather (index_select is far faster than advanced indexing when the cores are oversubscribed)
        return self._with_silence.index_select(0, rows.view(-1)).view(*rows.shape, NUM_KEYS), lengths


def roll_from_sequence(seq, where: str = "") -> np.ndarray:
    """(T, 88) uint8 piano roll of one sequence (list of tuples of MIDI pitches)."""
    roll = np.zeros((len(seq), NUM_KEYS), dtype=np.uint8)
    for t, notes in enumerate(seq):
        for pitch in notes:
            k = int(pitch) - LOWEST_PITCH
            if not 0 <= k < NUM_KEYS:
                raise UserError(
                    f"{where}: MIDI pitch {pitch} at step {t} is outside the piano range 21..108; "
                    f"the file must be {LAYOUT}"
                )
            roll[t, k] = 1
    return roll


def pack_rolls(rolls: list[np.ndarray]) -> PianoRolls:
    lengths = torch.tensor([len(r) for r in rolls], dtype=torch.int64)
    offsets = torch.cumsum(lengths, 0) - lengths
    frames = (
        torch.from_numpy(np.concatenate(rolls, 0)) if rolls else torch.zeros(0, NUM_KEYS, dtype=torch.uint8)
    )
    return PianoRolls(frames, offsets, lengths)


def dataset_path(data_dir: str | Path, dataset: str) -> Path:
    return Path(data_dir) / f"{dataset}.pickle"


def load_piano_rolls(data_dir: str | Path, dataset: str) -> dict[str, PianoRolls]:
    """Read `<data_dir>/<dataset>.pickle` into packed piano rolls per split."""
    path = dataset_path(data_dir, dataset)
    if not path.is_file():
        hint = "" if dataset in DATASETS else f" (task.dataset is one of {', '.join(DATASETS)})"
        raise UserError(
            f"polyphonic data {path} not found{hint}: task.data_dir must hold {dataset}.pickle, "
            f"{LAYOUT}, from {SOURCE}"
        )
    try:
        with open(path, "rb") as f:
            raw = pickle.load(f)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means a bad file
        raise UserError(
            f"cannot read {path} as a pickle ({type(e).__name__}: {e}); re-download it from {SOURCE}"
        ) from None
    if not isinstance(raw, dict) or not {"train", "valid", "test"} <= set(raw):
        raise UserError(f"{path} does not have the expected layout: {LAYOUT}")
    out = {}
    for split in ("train", "valid", "test"):
        seqs = [s for s in raw[split] if len(s) > 0]
        if not seqs:
            raise UserError(f"{path}: split {split!r} has no sequences; expected {LAYOUT}")
        out[split] = pack_rolls([roll_from_sequence(s, f"{path} [{split}]") for s in seqs])
    return out
