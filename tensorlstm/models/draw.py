"""DRAW (Gregor et al., ICML 2015): a recurrent variational auto-encoder drawing an image glimpse by glimpse.

At each of T steps the encoder reads the image and the error image ``x - sigmoid(canvas)`` (through a
Gaussian filterbank attention window, or whole), a latent ``z_t`` is drawn from ``N(mu_t, sigma_t)``, the
decoder turns it into a write that is added to the canvas. The encoder and the decoder are any
:class:`~tensorlstm.cells.base.RecurrentNet` driven one step at a time (``init_state`` / ``step``).

Attention (Section 3.2 of the paper). From a hidden state h a linear layer emits
``(g~x, g~y, log sigma^2, log delta~, log gamma)``; for an image of width A and height B:

    gx = (A + 1)/2 * (g~x + 1),   gy = (B + 1)/2 * (g~y + 1),   delta = (max(A, B) - 1)/(N - 1) * delta~
    mu_x[i] = gx + (i - N/2 - 1/2) * delta        (i = 1..N, pixel coordinates a = 1..A)
    Fx[i, a] = exp(-(a - mu_x[i])^2 / (2 sigma^2)) / Z_i   (each row sums to 1)

    read(x)  = gamma * Fy x Fx^T                  (N x N patch)
    write(w) = 1/gamma * Fy^T w Fx                (B x A image)

so ``write(read(x)) = Fy^T Fy x Fx^T Fx`` exactly (the gammas cancel); with N = A = B, delta = 1 and a small
sigma the filterbanks tend to the identity and ``write(read(x)) -> x`` (tests check both).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from tensorlstm.cells.base import RecurrentNet


@dataclass(frozen=True)
class DrawShape:
    """Sizes of a DRAW model (everything except the two recurrent nets)."""

    height: int = 28
    width: int = 28
    latent_size: int = 100
    glimpses: int = 64  # T
    attention: bool = True  # False: read the whole image and error image, write a whole image
    read_n: int = 2
    write_n: int = 5
    learned_canvas: bool = False  # learn the initial canvas c_0 (else zeros)

    @property
    def pixels(self) -> int:
        return self.height * self.width

    @property
    def read_size(self) -> int:
        """Features read per glimpse: the image and the error image (patches or whole)."""
        return 2 * (self.read_n**2 if self.attention else self.pixels)

    def encoder_input_size(self, decoder_hidden: int) -> int:
        """The encoder's input is ``[read(x, x_hat), h_dec_{t-1}]``."""
        return self.read_size + decoder_hidden


# ------------------------------------------------------------------------------------------- filterbanks
def attention_window(
    params: torch.Tensor, height: int, width: int, n: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Map the 5 raw outputs (..., 5) of the attention layer to (gx, gy, sigma2, delta, gamma)."""
    gx_t, gy_t, log_sigma2, log_delta_t, log_gamma = params.unbind(-1)
    gx = (width + 1) / 2 * (gx_t + 1)
    gy = (height + 1) / 2 * (gy_t + 1)
    delta = (max(width, height) - 1) / max(n - 1, 1) * torch.exp(log_delta_t)
    return gx, gy, torch.exp(log_sigma2), delta, torch.exp(log_gamma)


def filterbank(
    center: torch.Tensor, delta: torch.Tensor, sigma2: torch.Tensor, n: int, size: int
) -> torch.Tensor:
    """Gaussian filterbank (..., n, size): row i is a normalised Gaussian over pixel coordinates 1..size
    centred at ``center + (i - n/2 - 1/2) * delta`` (i = 1..n) with variance sigma2.

    The normalisation is a softmax over the pixels: rows sum to 1 exactly, also when every weight of a
    row would underflow (a window far off the image then reads its nearest border pixel).
    """
    i = torch.arange(n, device=center.device, dtype=center.dtype)  # 0-based: i0 = i - 1
    mu = center.unsqueeze(-1) + (i - n / 2 + 0.5) * delta.unsqueeze(-1)  # (..., n)
    a = torch.arange(1, size + 1, device=center.device, dtype=center.dtype)
    logits = -((a - mu.unsqueeze(-1)) ** 2) / (2 * sigma2.unsqueeze(-1).unsqueeze(-1))
    return torch.softmax(logits, dim=-1)


def filterbanks(
    params: torch.Tensor, height: int, width: int, n: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(Fx (..., n, width), Fy (..., n, height), gamma (...)) from the raw attention outputs (..., 5)."""
    gx, gy, sigma2, delta, gamma = attention_window(params, height, width, n)
    return filterbank(gx, delta, sigma2, n, width), filterbank(gy, delta, sigma2, n, height), gamma


def read_patch(image: torch.Tensor, fx: torch.Tensor, fy: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """gamma * Fy x Fx^T: image (B, H, W) -> patch (B, N, N)."""
    return gamma[..., None, None] * (fy @ image @ fx.transpose(-1, -2))


def write_patch(patch: torch.Tensor, fx: torch.Tensor, fy: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """1/gamma * Fy^T w Fx: patch (B, N, N) -> image (B, H, W)."""
    return (fy.transpose(-1, -2) @ patch @ fx) / gamma[..., None, None]


def gaussian_kl(mu: torch.Tensor, log_sigma: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(0, 1)) summed over the last axis: 0.5 sum(mu^2 + sigma^2 - 2 log sigma - 1)."""
    return 0.5 * (mu.pow(2) + torch.exp(2 * log_sigma) - 2 * log_sigma - 1).sum(-1)


# ------------------------------------------------------------------------------------------------ model
class DRAW(nn.Module):
    """DRAW with any recurrent nets as encoder and decoder.

    ``forward(x)`` with x (B, H*W) in [0, 1] returns ``(logits, kl)``: the final canvas (B, H*W), whose
    sigmoid is the Bernoulli mean of every pixel, and the KL term per image (B,) summed over glimpses.
    """

    def __init__(self, shape: DrawShape, encoder: RecurrentNet, decoder: RecurrentNet) -> None:
        super().__init__()
        self.shape = shape
        self.encoder = encoder
        self.decoder = decoder
        h_enc, h_dec = encoder.output_size, decoder.output_size
        self.to_latent = nn.Linear(h_enc, 2 * shape.latent_size)  # mu, log sigma
        if shape.attention:
            self.read_attention = nn.Linear(h_dec, 5)
            self.write_attention = nn.Linear(h_dec, 5)
            self.write_content = nn.Linear(h_dec, shape.write_n**2)
        else:
            self.write_content = nn.Linear(h_dec, shape.pixels)
        if shape.learned_canvas:
            self.canvas0 = nn.Parameter(torch.zeros(shape.pixels))
        else:
            self.register_buffer("canvas0", torch.zeros(shape.pixels))

    def primary_net(self) -> RecurrentNet:
        """The user's recurrent net, the one `tlstm info` reports: the encoder."""
        return self.encoder

    # -- the parts of one glimpse
    def read(self, image: torch.Tensor, error: torch.Tensor, h_dec: torch.Tensor) -> torch.Tensor:
        """Features (B, read_size) of the image and error image (both (B, H, W)) for this glimpse."""
        s = self.shape
        if not s.attention:
            return torch.cat([image.flatten(1), error.flatten(1)], dim=-1)
        fx, fy, gamma = filterbanks(self.read_attention(h_dec), s.height, s.width, s.read_n)
        both = torch.stack([image, error], 1)  # (B, 2, H, W): one window for both
        return read_patch(both, fx.unsqueeze(1), fy.unsqueeze(1), gamma.unsqueeze(1)).flatten(1)

    def write(self, h_dec: torch.Tensor) -> torch.Tensor:
        """The canvas update (B, H*W) from the decoder's output."""
        s = self.shape
        content = self.write_content(h_dec)
        if not s.attention:
            return content
        fx, fy, gamma = filterbanks(self.write_attention(h_dec), s.height, s.width, s.write_n)
        patch = content.view(-1, s.write_n, s.write_n)
        return write_patch(patch, fx, fy, gamma).flatten(1)

    def _initial(self, batch: int, like: torch.Tensor):
        dec_state = self.decoder.init_state(batch, device=like.device, dtype=like.dtype)
        h_dec = like.new_zeros(batch, self.decoder.output_size)
        canvas = self.canvas0.to(like.dtype).expand(batch, -1)
        return dec_state, h_dec, canvas

    def forward(
        self, x: torch.Tensor, generator: torch.Generator | None = None, keep_canvases: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor] | tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """x (B, H*W) -> (canvas logits (B, H*W), KL per image (B,)[, canvas after each glimpse])."""
        s = self.shape
        b = x.shape[0]
        image = x.view(b, s.height, s.width)
        enc_state = self.encoder.init_state(b, device=x.device, dtype=x.dtype)
        dec_state, h_dec, canvas = self._initial(b, x)
        kl = x.new_zeros(b)
        canvases = []
        for _ in range(s.glimpses):
            error = image - torch.sigmoid(canvas).view(b, s.height, s.width)
            r = self.read(image, error, h_dec)
            h_enc, enc_state = self.encoder.step(torch.cat([r, h_dec], dim=-1), enc_state)
            mu, log_sigma = self.to_latent(h_enc).chunk(2, dim=-1)
            eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
            z = mu + torch.exp(log_sigma) * eps
            kl = kl + gaussian_kl(mu, log_sigma)
            h_dec, dec_state = self.decoder.step(z, dec_state)
            canvas = canvas + self.write(h_dec)
            if keep_canvases:
                canvases.append(canvas)
        if keep_canvases:
            return canvas, kl, canvases
        return canvas, kl

    @torch.no_grad()
    def generate(
        self, n: int, device: torch.device | None = None, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Draw n images from the prior z_t ~ N(0, I): canvas logits after each glimpse, (T, n, H*W)."""
        device = device or self.canvas0.device
        like = self.canvas0.new_zeros(()).to(device)
        dec_state, h_dec, canvas = self._initial(n, like)
        out = []
        for _ in range(self.shape.glimpses):
            z = torch.randn(n, self.shape.latent_size, generator=generator, device=device, dtype=like.dtype)
            h_dec, dec_state = self.decoder.step(z, dec_state)
            canvas = canvas + self.write(h_dec)
            out.append(canvas)
        return torch.stack(out)


def bernoulli_nll(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """-log p(x | canvas) in nats per image (B,): BCE-with-logits summed over the pixels."""
    return F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1)
