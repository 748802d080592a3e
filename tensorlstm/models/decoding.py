"""Decoding for any step-wise generative model: greedy and batched beam search with length normalisation.

A model exposes two methods (the captioner does; any token generator can):

    begin(context)          -> (log_probs (B, V), state)   log p(first token | context)
    advance(tokens, state)  -> (log_probs (N, V), state)   after feeding tokens (N,), N = rows of the state

A state is any nesting of tuples/lists of tensors whose first dimension is the row (B, or B x beam).

Scores are sums of log-probabilities of the tokens, the end token included. With ``length_penalty`` alpha
a finished hypothesis of n tokens is ranked by ``score / n**alpha`` (alpha = 0: raw log-probability; 1:
mean per token). Beam search keeps ``beam_size`` unfinished hypotheses per row; it stops when no
unfinished one can still beat the best finished one (exact bound: log-probabilities never rise), or after
``max_len`` tokens, when the unfinished ones are ranked as they are.
"""

from __future__ import annotations

import torch

from tensorlstm.cells.base import map_state


def _rows(state, index: torch.Tensor):
    return map_state(lambda t: t.index_select(0, index), state)


@torch.no_grad()
def greedy(model, context, end: int, max_len: int) -> list[list[int]]:
    """The most probable token at every step, up to and including ``end`` (dropped) or max_len tokens."""
    logp, state = model.begin(context)
    B = logp.shape[0]
    out = torch.zeros(B, 0, dtype=torch.long, device=logp.device)
    alive = torch.ones(B, dtype=torch.bool, device=logp.device)
    for t in range(max_len):
        token = logp.argmax(-1)
        out = torch.cat([out, token[:, None]], 1)
        alive &= token != end
        if not alive.any() or t == max_len - 1:
            break
        logp, state = model.advance(token, state)
    return [_until_end(row, end) for row in out.tolist()]


def _until_end(seq: list[int], end: int) -> list[int]:
    return seq[: seq.index(end)] if end in seq else seq


@torch.no_grad()
def beam_search(model, context, end: int, max_len: int, beam_size: int = 3,
                length_penalty: float = 0.0) -> tuple[list[list[int]], list[float]]:
    """The best hypothesis per row (tokens without ``end``) and its ranking score."""
    K, alpha = int(beam_size), float(length_penalty)
    if K < 1:
        raise ValueError(f"beam_size must be >= 1, got {beam_size}")
    logp, state = model.begin(context)
    B, V = logp.shape
    device = logp.device
    rows = torch.arange(B, device=device).repeat_interleave(K)
    state = _rows(state, rows)
    logp = logp.index_select(0, rows)
    scores = torch.full((B, K), float("-inf"), dtype=logp.dtype, device=device)
    scores[:, 0] = 0.0  # the K copies of the start: only one may expand, or the beam fills with duplicates
    seqs = torch.zeros(B, K, 0, dtype=torch.long, device=device)
    best: list[tuple[float, list[int]] | None] = [None] * B
    width = min(2 * K, K * V)  # at most K of the 2K best candidates end: K unfinished always remain
    for t in range(max_len):
        n = t + 1  # tokens of a hypothesis after this step
        cand = (scores.view(B * K, 1) + logp.float().to(scores.dtype)).view(B, K * V)
        top, idx = cand.topk(width, dim=1)
        beam, token = idx // V, idx % V
        ends = (token == end) & torch.isfinite(top)
        for b, j in ends.nonzero().tolist():
            value = float(top[b, j]) / n**alpha
            if best[b] is None or value > best[b][0]:
                best[b] = (value, seqs[b, beam[b, j]].tolist())
        keep = top.masked_fill(token == end, float("-inf")).topk(K, dim=1).indices  # (B, K) into width
        scores = top.gather(1, keep)
        beam, token = beam.gather(1, keep), token.gather(1, keep)
        seqs = torch.cat([seqs.gather(1, beam[..., None].expand(-1, -1, seqs.shape[2])), token[..., None]], 2)
        if t == max_len - 1:
            break
        # an unfinished hypothesis can at best keep its score and grow to max_len tokens
        bound = scores.max(1).values
        bound = torch.where(bound < 0, bound / max_len**alpha, bound / n**alpha)
        if all(best[b] is not None and best[b][0] >= float(bound[b]) for b in range(B)):
            break
        flat = (torch.arange(B, device=device)[:, None] * K + beam).view(-1)
        state = _rows(state, flat)
        logp, state = model.advance(token.view(-1), state)
    out, values = [], []
    for b in range(B):  # hypotheses cut at max_len compete with their current score
        j = int(scores[b].argmax())
        cut = float(scores[b, j]) / seqs.shape[2]**alpha
        if best[b] is None or (torch.isfinite(scores[b, j]) and cut > best[b][0]):
            best[b] = (cut, seqs[b, j].tolist())
        values.append(best[b][0])
        out.append(best[b][1])
    return out, values


def sequence_log_prob(model, context, tokens: list[list[int]], end: int) -> torch.Tensor:
    """log p(tokens + [end] | context) per row under the model, step by step (for tests and rescoring)."""
    logp, state = model.begin(context)
    B = logp.shape[0]
    total = torch.zeros(B, dtype=torch.float64, device=logp.device)
    longest = max(len(s) for s in tokens) + 1
    padded = [s + [end] + [end] * (longest - len(s) - 1) for s in tokens]
    target = torch.tensor(padded, device=logp.device)
    lengths = torch.tensor([len(s) + 1 for s in tokens], device=logp.device)
    for t in range(longest):
        total += torch.where(t < lengths, logp.gather(1, target[:, t : t + 1]).squeeze(1).double(), 0.0)
        if t < longest - 1:
            logp, state = model.advance(target[:, t], state)
    return total
