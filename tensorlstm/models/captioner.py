"""Show and Tell (Vinyals et al. 2015): an image embedding fed once as the first decoder input, then words.

    x_{-1} = W_I f(I),   x_t = W_e S_t (t = 0..N-1, S_0 = <start>),   p_{t+1} = softmax(W_o h_t)

The decoder is any :class:`~tensorlstm.cells.base.RecurrentNet` (lstm, gru, tt, bt, cp, tucker, tlstm, slstm).
Training is teacher-forced over whole sequences (``forward``: the cell's own sequence path, input map
projected once for all steps). Decoding goes step by step through ``begin`` / ``advance``, the interface of
:mod:`tensorlstm.models.decoding`.

Nets with a delay (tLSTM: its step returns the output for the input ``delay`` steps earlier): ``advance``
feeds the real token to the kept state, then ``delay`` blank (zero) inputs to a copy of it and reads the
output there. This is the output that ``forward`` gives for that token: tLSTM's output for step t depends
on inputs up to t only (its receptive field), and ``forward`` appends the same blank inputs after the last
step. So greedy and beam search score exactly what teacher forcing trained (a test checks it per cell).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tensorlstm.cells.base import RecurrentNet


class ShowAndTell(nn.Module):
    def __init__(self, feature_size: int, vocab_size: int, embed_size: int, decoder: RecurrentNet,
                 start: int, dropout: float = 0.0, zero_image: bool = False) -> None:
        super().__init__()
        self.image_embed = nn.Linear(feature_size, embed_size)
        self.word_embed = nn.Embedding(vocab_size, embed_size)
        self.decoder = decoder
        self.out = nn.Linear(decoder.output_size, vocab_size)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.start = int(start)
        self.zero_image = bool(zero_image)  # ablation: the decoder never sees the image (features zeroed)

    def primary_net(self) -> RecurrentNet:
        return self.decoder

    def _image(self, features: torch.Tensor) -> torch.Tensor:
        if self.zero_image:
            features = torch.zeros_like(features)
        return self.dropout(self.image_embed(features))

    def forward(self, features: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """features (B, F), tokens (B, T) = <start> w1 .. wn <end> <pad>..; returns logits (B, T-1, V),
        position t predicting tokens[:, t + 1]."""
        x = torch.cat([self._image(features)[:, None], self.dropout(self.word_embed(tokens[:, :-1]))], 1)
        y, _ = self.decoder(x)
        return self.out(self.dropout(y[:, 1:]))

    # -- step-wise interface of tensorlstm.models.decoding ------------------------------------------------
    def _step(self, x: torch.Tensor, state):
        y, state = self.decoder.step(x, state)
        if self.decoder.delay:
            look, blank = state, torch.zeros_like(x)
            for _ in range(self.decoder.delay):
                y, look = self.decoder.step(blank, look)
        return y, state

    def begin(self, features: torch.Tensor):
        state = self.decoder.init_state(features.shape[0], device=features.device, dtype=features.dtype)
        _, state = self.decoder.step(self._image(features), state)  # its output is never read
        start = torch.full((features.shape[0],), self.start, dtype=torch.long, device=features.device)
        return self.advance(start, state)

    def advance(self, tokens: torch.Tensor, state):
        y, state = self._step(self.word_embed(tokens), state)
        return F.log_softmax(self.out(y).float(), dim=-1), state
