"""How training looks in a terminal: the run header, a tqdm bar with tokens/s, validation lines."""

from __future__ import annotations

import sys


class TrainProgress:
    """Draws training events: a header, a tqdm bar (tokens, tok/s, ETA, loss, ppl, lr), validation lines."""

    def __init__(self, enabled: bool) -> None:
        self.enabled, self.bar = enabled, None

    def __call__(self, event) -> None:
        import math

        from tqdm import tqdm

        if event.kind == "start":
            for line in run_header(event.info):
                print(line, file=sys.stderr)
            self.bar = tqdm(total=event.total_tokens or None, initial=event.tokens, unit="tok", unit_scale=True,
                            disable=not self.enabled, dynamic_ncols=True, smoothing=0.05, desc="train")
        elif event.kind == "step":
            self.bar.update(event.tokens - self.bar.n)
            self.bar.set_postfix_str(
                f"loss {event.loss:.3f} ppl {math.exp(min(event.loss, 700)):,.1f} lr {event.lr:.3g}", refresh=False)
        elif event.kind == "valid":
            self.bar.write(f"step {event.step:,} | {event.tokens:,} tokens | valid ppl {event.valid_ppl:,.2f} "
                           f"| lr {event.lr:.3g}", file=sys.stderr)
        elif event.kind == "interrupted":
            self.close()
            resume = f"lmfix train --resume {event.info['run_dir']}"
            if event.info["world_size"] > 1:
                resume = f"torchrun --nproc-per-node {event.info['world_size']} -m {resume}"
            print(f"checkpoint saved at step {event.step:,}; continue with: {resume}", file=sys.stderr)
        elif event.kind == "end":
            self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def run_header(info: dict) -> list[str]:
    c = info["counts"]
    emb = info["embedding"]
    source = f", fixed E from artifact {emb['id']} ({emb['method']})" if emb else ""
    lines = [
        f"device {info['device']} ({info['precision']}), {info['world_size']} process(es), "
        f"vocabulary {info['vocab_size']:,}, "
        f"{info['tokens_per_epoch']:,} tokens/epoch{source}"
        + (" (resumed)" if info["resumed"] else ""),
        f"parameters: trainable {c.trainable:,} | fixed {c.fixed:,} | generated {c.generated:,} | "
        f"total {c.total:,}",
    ]
    if c.trainable < c.total:
        lines.append(f"  {1 - c.trainable / c.total:.1%} of the model's {c.total:,} parameters are not trained "
                     f"({c.stored:,} stored)")
    lines.append(f"gradients per step: {info['grad_bytes_per_step'] / 2**10:,.1f} KiB")
    return lines
