"""SAE training against SAELens: speed at equal tokens, held-out EV after them.

Real activations of SmolLM2-135M `blocks.7.hook_resid_post` over standard-library docstrings
(128-token windows, BOS dropped) are captured once; the last rows are held out. Every
implementation trains a TopK SAE 576 -> 4608, k = 32, batch 1024, on the same batches in the
same order, for the same number of steps (default 92: 94k token-steps), at the same learning
rate (saelab's default for this width, 0.03/sqrt(576) = 1.25e-3), one torch thread:

  saelab            saelab.sae.SAETrainer with its defaults (sparse kernels, inputs at unit mean
                    norm, b_dec at the data mean, AuxK, warm-up and decay)
  sae_lens          SAELens `TopKTrainingSAE` + `SAETrainer.step`, its defaults (b_dec zero,
                    decoder rows at norm 0.1 with W_enc = W_dec^T, activations rescaled by
                    decoder norm, AuxK, gradient clipping at 1, constant schedule)
  sae_lens_best     the same with b_dec initialised to the mean of the data sample saelab
                    initialises from: its best settings for this data (its recommended
                    decoder init is the default above)

`--sae-lens-lrs 4e-3,...` adds SAELens (best settings) at other learning rates, for context.
Implementations alternate in chunks of 4 steps, order rotated each round; the speed ratio is
the median of per-round ratios. Before timings are trusted, saelab's trained SAE is saved and
loaded by SAELens (`SAE.load_from_disk`), which must reproduce saelab's reconstruction.

    .venv-peers/bin/python benchmarks/peers/bench_train_peers.py [--quick] [--json OUT]
"""

from __future__ import annotations

import tempfile
import time

import _peers as P

C = P.C
HOOK = "blocks.7.hook_resid_post"
D_IN, D_SAE, K, BATCH = 576, 4608, 32, 1024


def capture(n_train: int, n_held: int):
    import numpy as np

    from saelab.models import parse_hooks
    from saelab.sae.sources import StreamSource

    lm = P.load_default()
    need = -(-(n_train + n_held) // 127)
    w = np.asarray(C.token_windows(lm.tokenizer, need, 128, lm.tokenizer.bos_token_id))
    src = StreamSource(lm, parse_hooks(HOOK, lm.n_layers), w, BATCH, 0, len(w))
    x = src.capture(w)[HOOK]
    return x[:n_train].contiguous(), x[n_train : n_train + n_held].contiguous()


class Saelab:
    def __init__(self, sample, steps: int, lr: float | None):
        from saelab.sae.train import SAETrainer, TrainConfig

        cfg = TrainConfig(d_sae=D_SAE, k=K, batch_size=BATCH, total_steps=steps, lr=lr)
        self.tr = SAETrainer(cfg, D_IN, sample)
        self.lr = self.tr.lr

    def step(self, x) -> None:
        self.tr.step(x)

    def sae(self):
        return self.tr.to_sae()

    def reconstruct(self, x):
        import torch

        sae = self.sae()
        with torch.no_grad():
            f = sae.encode(x)
            return sae.decode(f), f


class SaeLens:
    def __init__(self, sample, steps: int, lr: float, mean_init: bool, seed: int = 0):
        import torch
        from sae_lens.config import SAETrainerConfig
        from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig
        from sae_lens.training.sae_trainer import SAETrainer

        torch.manual_seed(seed)
        self.sae_ = TopKTrainingSAE(
            TopKTrainingSAEConfig(d_in=D_IN, d_sae=D_SAE, k=K, dtype="float32", device="cpu")
        )
        if mean_init:
            with torch.no_grad():
                self.sae_.b_dec.copy_(sample.float().mean(0))
        cfg = SAETrainerConfig(
            total_training_samples=steps * BATCH,
            train_batch_size_samples=BATCH,
            lr=lr,
            lr_end=lr,
        )
        self.tr = SAETrainer(cfg, self.sae_, data_provider=iter(()))

    def step(self, x) -> None:
        self.tr.step(x)
        self.tr.n_training_steps += 1  # what fit() does after each step

    def reconstruct(self, x):
        import torch

        self.sae_.eval()
        with torch.no_grad():
            f = self.sae_.encode(x)
            out = self.sae_.decode(f), f
        self.sae_.train()
        return out


def held_out(impl, x) -> dict:
    x_hat, f = impl.reconstruct(x)
    ev = 1 - float(((x_hat - x) ** 2).sum() / ((x - x.mean(0)) ** 2).sum())
    return {
        "ev": ev,
        "l0": float((f > 0).float().sum(-1).mean()),
        "never_active": int(((f > 0).sum(0) == 0).sum()),
    }


def format_check(saelab: Saelab, x) -> float:
    """saelab's SAE saved to disk and loaded by SAELens must reconstruct as saelab does."""
    import torch
    from sae_lens import SAE as LensSAE

    with tempfile.TemporaryDirectory() as tmp:
        saelab.sae().save(tmp)
        other = LensSAE.load_from_disk(tmp, device="cpu")
        with torch.no_grad():
            theirs = other.decode(other.encode(x))
    ours, _ = saelab.reconstruct(x)
    return float((theirs - ours).abs().max() / ours.abs().max())


def main() -> None:
    p = C.base_parser(__doc__)
    p.add_argument("--steps", type=int, default=None, help="steps of 1024 tokens (default 92)")
    p.add_argument("--train-tokens", type=int, default=None)
    p.add_argument("--lr", type=float, default=None, help="learning rate of all (default saelab's)")
    p.add_argument("--sae-lens-lrs", default="", help="extra SAELens (best settings) lrs")
    a = p.parse_args()
    C.pin_threads(a.threads)
    P.require_peers()
    P.print_versions()
    import json

    print(json.dumps(C.machine()))
    steps = a.steps or (24 if a.quick else 92)
    n_train = a.train_tokens or (12_288 if a.quick else 24_576)
    x, held = capture(n_train, 2048)
    sample = x[:8192]
    impls = {"saelab": Saelab(sample, steps, a.lr)}
    lr = impls["saelab"].lr
    impls["sae_lens"] = SaeLens(sample, steps, lr, mean_init=False)
    impls["sae_lens_best"] = SaeLens(sample, steps, lr, mean_init=True)
    for extra in filter(None, a.sae_lens_lrs.split(",")):
        impls[f"sae_lens_best lr {extra}"] = SaeLens(sample, steps, float(extra), mean_init=True)
    names = list(impls)
    n_batches = len(x) // BATCH
    secs = {n: [] for n in names}
    step, r, chunk = 0, 0, 4
    while step < steps:
        todo = min(chunk, steps - step)
        batches = [
            x[((step + j) % n_batches) * BATCH : ((step + j) % n_batches + 1) * BATCH]
            for j in range(todo)
        ]
        for n in C.rotated(names, r):
            t0 = time.perf_counter()
            for b in batches:
                impls[n].step(b)
            secs[n].append(time.perf_counter() - t0)
        step += todo
        r += 1
    fmt = format_check(impls["saelab"], held)
    agree = fmt < 1e-4
    print(
        f"check: saelab's SAE loaded by SAELens reconstructs as saelab does (max rel diff"
        f" {fmt:.1e}): {'ok' if agree else 'DISAGREE: timings not trusted'}"
    )
    rows, res = [], {}
    for n in names:
        h = held_out(impls[n], held)
        res[n] = h
        ratio = C.median([s / o for s, o in zip(secs[n], secs["saelab"], strict=True)])
        rows.append(
            {
                "implementation": n,
                "tokens/s": steps * BATCH / sum(secs[n]),
                "time vs saelab": ratio,
                "held-out EV": h["ev"],
                "L0": h["l0"],
                "never active (held-out)": h["never_active"],
            }
        )
    print(
        f"\nTopK {D_IN} -> {D_SAE}, k={K}, batch {BATCH}, {steps} steps ({steps * BATCH:,}"
        f" token-steps over {len(x):,} tokens), lr {lr:.3g}, {a.threads} thread(s)"
    )
    C.print_table(rows)
    speed = C.median([s / o for s, o in zip(secs["sae_lens"], secs["saelab"], strict=True)])
    best = res["sae_lens_best"]["ev"]
    print(C.summary_line("train.speed_vs_sae_lens", speed, ">= 4.0", speed >= 4.0 and agree))
    print(
        C.summary_line(
            "train.ev_minus_sae_lens_best",
            1 + res["saelab"]["ev"] - best,
            ">= 1.0 (EV >= SAELens best)",
            res["saelab"]["ev"] >= best and agree,
            f"EV saelab {res['saelab']['ev']:.3f} vs SAELens best {best:.3f},"
            f" defaults {res['sae_lens']['ev']:.3f}",
        )
    )
    C.dump_json(
        a.json,
        {
            "machine": C.machine(),
            "versions": P.versions(),
            "rows": rows,
            "seconds": secs,
            "format_check": fmt,
        },
    )


if __name__ == "__main__":
    main()
