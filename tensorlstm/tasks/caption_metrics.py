"""Caption metrics from `pycocoevalcap` (the COCO caption evaluation code), wrapped, never re-implemented.

As ``COCOEvalCap`` does: references and hypotheses are tokenised by the Stanford PTB tokenizer (Java), then
scored by BLEU-1..4, METEOR 1.5 (Java), ROUGE-L and CIDEr-D (pycocoevalcap's ``Cider`` is CIDEr-D: clipped
n-gram counts, Gaussian length penalty sigma 6, x10), optionally SPICE (Java; downloads the Stanford CoreNLP
models on first use, so off by default). The METEOR process is started once and reused.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys

from tensorlstm.errors import UserError

METRICS = ("bleu1", "bleu2", "bleu3", "bleu4", "meteor", "rouge_l", "cider")


def java_available() -> bool:
    return shutil.which("java") is not None


@contextlib.contextmanager
def _quiet_stderr():
    """Silence the Java tools' progress lines on stderr (file descriptor 2, not just sys.stderr)."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real stderr (e.g. captured by a framework): leave it alone
        yield
        return
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


class CaptionScorer:
    """``scorer(references, hypotheses) -> {bleu1..bleu4, meteor, rouge_l, cider[, spice]}`` where
    references maps an image id to its reference captions and hypotheses an image id to one caption."""

    def __init__(self, spice: bool = False) -> None:
        self.spice = bool(spice)

    def _check(self) -> None:
        if not java_available():
            raise UserError("the caption metrics (pycocoevalcap's PTB tokenizer and METEOR) run on Java, and no "
                            "`java` is on PATH: install a Java runtime (e.g. apt-get install default-jre-headless)")

    def __call__(self, references: dict, hypotheses: dict) -> dict[str, float]:
        from pycocoevalcap.bleu.bleu import Bleu
        from pycocoevalcap.cider.cider import Cider
        from pycocoevalcap.rouge.rouge import Rouge
        from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

        if set(references) != set(hypotheses):
            raise ValueError("references and hypotheses must cover the same image ids")
        if not hypotheses:
            raise ValueError("no captions to score")
        self._check()
        tokenizer = PTBTokenizer()
        with _quiet_stderr():
            gts = tokenizer.tokenize({k: [{"caption": c} for c in v] for k, v in references.items()})
            res = tokenizer.tokenize({k: [{"caption": v}] for k, v in hypotheses.items()})
        bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
        out = {f"bleu{n + 1}": float(b) for n, b in enumerate(bleu)}
        out["meteor"] = float(self.meteor().compute_score(gts, res)[0])
        out["rouge_l"] = float(Rouge().compute_score(gts, res)[0])
        out["cider"] = float(Cider().compute_score(gts, res)[0])
        if self.spice:
            from pycocoevalcap.spice.spice import Spice

            try:
                out["spice"] = float(Spice().compute_score(gts, res)[0])
            except Exception as e:  # its model download, or the Java side
                raise UserError(f"SPICE failed ({str(e).splitlines()[0] if str(e) else type(e).__name__}); it "
                                "downloads Stanford CoreNLP models on first use; set task.spice=false") from e
        return out

    def meteor(self):
        return _meteor()


_METEOR: list = []


def _meteor():
    """One METEOR Java process per Python process (it loads its paraphrase table for seconds), shared by every
    scorer; pycocoevalcap's Meteor ends it when collected at exit."""
    if not _METEOR:
        from pycocoevalcap.meteor.meteor import Meteor

        _METEOR.append(Meteor())
    return _METEOR[0]

