"""Where training activations come from: an activation store, or the model itself (streamed).

Both sources hand out shuffled batches whose order is a pure function of (seed, step), so a
run resumed from a checkpoint sees exactly the batches an uninterrupted run would have, and
both keep memory bounded: the store is read block by block (a block is a few thousand rows,
blocks are shuffled, then rows within a buffer of blocks), and streaming keeps one buffer of
captured rows. BOS positions are left out: their activations are huge attention sinks that
would dominate the reconstruction loss.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from saelab.errors import SaelabError
from saelab.models.capture import HookCapture, make_batch


def _rng(seed: int, *salt: int) -> np.random.Generator:
    return np.random.default_rng([seed, *salt])


def check_finite(
    x: torch.Tensor, hook: str, where: str, locate: Callable[[int], str] | None = None
) -> None:
    """NaN or inf in training data is a user-visible error naming the hook and the prompt
    (via `locate`, row of `x` -> its prompt or window), so the user can find the input."""
    bad = ~torch.isfinite(x)
    if bool(bad.any()):
        row = int(bad.any(dim=-1).nonzero()[0])
        place = locate(row) if locate else f"row {row}"
        raise SaelabError(
            f"activations of {hook} contain NaN or inf ({place}, {where}): the activations"
            " themselves are broken; capture them again in float32 and check the model"
        )


@dataclass
class StoreSource:
    """Training rows of one hook from the activation store, in shuffled blocks."""

    rows: np.ndarray  # indices of usable training rows (BOS and held-out prompts removed)
    held_out: np.ndarray  # indices of held-out rows
    read: object  # HookArray-like: __getitem__(int array) -> float32 rows
    hook: str
    batch_size: int
    seed: int
    offsets: np.ndarray | None = None  # store row offsets per prompt, to name bad prompts
    block_rows: int = 4096
    buffer_blocks: int = 16

    def _locate(self, rows: np.ndarray) -> Callable[[int], str]:
        def where(r: int) -> str:
            if self.offsets is None:
                return f"store row {int(rows[r])}"
            return f"prompt {int(np.searchsorted(self.offsets, rows[r], side='right')) - 1}"

        return where

    @property
    def batches_per_epoch(self) -> int:
        return len(self.rows) // self.batch_size

    def sample(self, n: int) -> torch.Tensor:
        """The first rows of epoch 0's order: data for initialisation (scale, b_dec)."""
        return next(self._buffers(0, limit=n))[:n]

    def heldout(self, limit: int = 8192) -> torch.Tensor:
        idx = np.sort(self.held_out[:limit])
        x = torch.from_numpy(np.asarray(self.read[idx])).float()
        check_finite(x, self.hook, "held-out rows", self._locate(idx))
        return x

    def _buffers(self, epoch: int, limit: int | None = None) -> Iterator[torch.Tensor]:
        n_blocks = -(-len(self.rows) // self.block_rows)
        order = _rng(self.seed, epoch).permutation(n_blocks)
        for b, start in enumerate(range(0, n_blocks, self.buffer_blocks)):
            picked = order[start : start + self.buffer_blocks]
            idx = np.concatenate(
                [self.rows[i * self.block_rows : (i + 1) * self.block_rows] for i in picked]
            )
            idx = idx[_rng(self.seed, epoch, b + 1).permutation(len(idx))]
            sidx = np.sort(idx)
            x = torch.from_numpy(np.asarray(self.read[sidx])).float()
            check_finite(x, self.hook, f"epoch {epoch}, buffer {b}", self._locate(sidx))
            # read sorted (contiguous chunks), then restore the shuffled order
            yield x[torch.from_numpy(np.argsort(np.argsort(idx)))]
            if limit is not None:
                return

    def batches(self, start_step: int = 0) -> Iterator[torch.Tensor]:
        """Batches from global step `start_step` on, epoch after epoch, forever."""
        per_epoch = self.batches_per_epoch
        if per_epoch == 0:
            raise SaelabError(
                f"{self.hook}: {len(self.rows)} training rows are fewer than one batch"
                f" ({self.batch_size}); extract more prompts or lower `batch_size`"
            )
        step = 0
        epoch = 0
        while True:
            carry: torch.Tensor | None = None
            emitted = 0
            for buf in self._buffers(epoch):
                if carry is not None:
                    buf = torch.cat([carry, buf])
                n_full = len(buf) // self.batch_size
                for i in range(n_full):
                    if emitted >= per_epoch:
                        break
                    if step >= start_step:
                        yield buf[i * self.batch_size : (i + 1) * self.batch_size]
                    step += 1
                    emitted += 1
                carry = buf[n_full * self.batch_size :]
            epoch += 1


def store_source(
    store: object,
    hook: str,
    batch_size: int,
    seed: int,
    holdout_prompts: int,
    exclude_bos: bool = True,
) -> StoreSource:
    """Split a store's rows of `hook` into training rows and held-out prompts' rows."""
    arr = store[hook]  # type: ignore[index]
    offsets = np.asarray(store.row_offsets)  # type: ignore[attr-defined]
    n_prompts = len(offsets) - 1
    keep = np.ones(int(offsets[-1]), dtype=bool)
    attrs = getattr(store, "attrs", {}) or {}
    if (
        exclude_bos
        and store.positions == "all"  # type: ignore[attr-defined]
        and attrs.get("prepend_bos", True)
        and not attrs.get("drop_bos", False)
    ):
        keep[offsets[:-1][offsets[:-1] < offsets[1:]]] = False
    n_hold = min(max(holdout_prompts, 1), max(n_prompts - 1, 0)) if n_prompts > 1 else 0
    cut = int(offsets[n_prompts - n_hold]) if n_hold else int(offsets[-1])
    all_rows = np.flatnonzero(keep)
    train = all_rows[all_rows < cut]
    held = all_rows[all_rows >= cut]
    if not len(held):  # one prompt only: evaluate on a slice of the training rows
        held = train[-min(len(train), 2048) :]
    return StoreSource(train, held, arr, hook, batch_size, seed, offsets=offsets)


class _Cancelled(Exception):
    """A prefetch stopped because nobody will read its buffer."""


class _Prefetch:
    """One buffer captured on a daemon thread while the caller trains on the current one.

    The model's forward and the SAE step are torch kernels that release the GIL, so on two
    cores they overlap. `cancel()` makes the capture stop at its next chunk of windows and
    waits for it, so no capture hooks stay on the model once the consumer is gone.
    """

    def __init__(self, key: tuple[int, int], fn: Callable[[threading.Event], object]):
        self.key = key
        self.stop = threading.Event()
        self.result: object = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(
            target=self._run, args=(fn,), daemon=True, name="saelab-stream-prefetch"
        )
        self.thread.start()

    def _run(self, fn: Callable[[threading.Event], object]) -> None:
        try:
            self.result = fn(self.stop)
        except BaseException as e:  # handed to the consumer by get()
            self.error = e

    def get(self) -> object:
        self.thread.join()
        if self.error is not None:
            raise self.error
        return self.result

    def cancel(self) -> None:
        self.stop.set()
        self.thread.join()


class StreamSource:
    """Rows captured from the model over token windows, shuffled within a bounded buffer.

    All hooks share one forward pass; a buffer holds `windows_per_buffer` windows of rows per
    hook. Windows are fixed-length and BOS is dropped, so every buffer yields the same number
    of batches and step -> (buffer, batch) is arithmetic: resuming recomputes one buffer.

    With `prefetch` (the default) the next buffer is captured on a second thread while the
    current one is trained on: a buffer is a pure function of (seed, epoch, buffer), so the
    batches are exactly those of the one-thread order; memory holds two buffers.

    With `cache` every window's rows are kept once captured, so epochs after the first train
    from memory instead of running the model again (an in-memory activation store). The cache
    is filled only by epoch 0's buffers (and one batch of the windows no epoch-0 buffer
    holds), each captured exactly as epoch 0 captures it, so a run resumed in a later epoch
    rebuilds the same rows and the batches stay a pure function of (seed, epoch, buffer).
    """

    def __init__(
        self,
        lm: object,
        hooks: Sequence[object],
        windows: np.ndarray,
        batch_size: int,
        seed: int,
        windows_per_buffer: int,
        capture_batch: int = 8,
        prefetch: bool = True,
        cache: bool = False,
    ):
        self.lm = lm
        self.prefetch = prefetch
        self.cache: dict[int, dict[str, torch.Tensor]] | None = {} if cache else None
        self._cache_lock = threading.Lock()
        self._ahead: _Prefetch | None = None
        self.hooks = list(hooks)
        self.windows = windows
        self.batch_size = batch_size
        self.seed = seed
        self.capture_batch = capture_batch
        self._last: tuple[tuple[int, int], dict[str, torch.Tensor]] | None = None
        ctx = windows.shape[1]
        self.rows_per_window = ctx - 1  # BOS dropped
        target = max(
            1, min(windows_per_buffer, len(windows)), -(-batch_size // self.rows_per_window)
        )
        # equal buffers that cover (nearly) every window: 1,024 windows with a target of 516
        # make two buffers of 512, not one of 516 and 508 windows never seen
        n_buffers = max(1, round(len(windows) / target))
        self.windows_per_buffer = max(len(windows) // n_buffers, 1)
        if self.windows_per_buffer * self.rows_per_window < batch_size:
            n_buffers = len(windows) // target
            self.windows_per_buffer = target
        self.buffers_per_epoch = max(n_buffers, 1)
        self.batches_per_buffer = (self.windows_per_buffer * self.rows_per_window) // batch_size
        if self.batches_per_buffer == 0 or n_buffers == 0:
            raise SaelabError(
                f"{len(windows)} windows of {ctx} tokens are fewer than one batch of"
                f" {batch_size} rows; use more `tokens` or a smaller `batch_size`"
            )

    @property
    def batches_per_epoch(self) -> int:
        return self.buffers_per_epoch * self.batches_per_buffer

    def capture(
        self,
        windows: np.ndarray,
        ids: np.ndarray | None = None,
        stop: threading.Event | None = None,
    ) -> dict[str, torch.Tensor]:
        """Rows (BOS dropped) of every hook over some windows (numbered `ids` in the corpus,
        for error messages), in window order. A set `stop` event ends it between chunks."""
        lm = self.lm
        out: dict[str, list[torch.Tensor]] = {h.name: [] for h in self.hooks}  # type: ignore[attr-defined]
        with HookCapture(lm.model, lm.adapter, self.hooks) as cap:  # type: ignore[attr-defined]
            for i in range(0, len(windows), self.capture_batch):
                if stop is not None and stop.is_set():
                    raise _Cancelled
                chunk = [list(map(int, w)) for w in windows[i : i + self.capture_batch]]
                b = make_batch(chunk, lm.pad_id, "right", lm.device)  # type: ignore[attr-defined]
                vals = cap.run(b)
                for h in self.hooks:
                    out[h.name].append(vals[h][:, 1:].reshape(-1, vals[h].shape[-1]).float().cpu())  # type: ignore[attr-defined]
        rows = {name: torch.cat(parts) for name, parts in out.items()}
        per = windows.shape[1] - 1
        for name, x in rows.items():
            check_finite(
                x,
                name,
                "streamed rows",
                lambda r: f"corpus window {int(ids[r // per]) if ids is not None else r // per}",
            )
        return rows

    def _next_key(self, epoch: int, b: int) -> tuple[int, int]:
        return (epoch, b + 1) if b + 1 < self.buffers_per_epoch else (epoch + 1, 0)

    def _pick(self, epoch: int, b: int) -> np.ndarray:
        """The windows of buffer `b` of `epoch`, in corpus order."""
        order = _rng(self.seed, epoch).permutation(len(self.windows))
        return np.sort(order[b * self.windows_per_buffer : (b + 1) * self.windows_per_buffer])

    def _remember(self, pick: np.ndarray, rows: dict[str, torch.Tensor]) -> None:
        per = self.rows_per_window
        assert self.cache is not None
        for j, w in enumerate(pick.tolist()):
            self.cache[w] = {n: x[j * per : (j + 1) * per] for n, x in rows.items()}

    def _fill_cache(self, stop: threading.Event | None) -> None:
        """Every window's rows, captured as epoch 0 captures them (see the class doc)."""
        assert self.cache is not None
        with self._cache_lock:
            for b in range(self.buffers_per_epoch):
                pick = self._pick(0, b)
                if not all(int(w) in self.cache for w in pick):
                    self._remember(pick, self.capture(self.windows[pick], pick, stop))
            rest = np.array(sorted(set(range(len(self.windows))) - set(self.cache)), dtype=int)
            if len(rest):
                self._remember(rest, self.capture(self.windows[rest], rest, stop))

    def _make_buffer(
        self, epoch: int, b: int, stop: threading.Event | None = None
    ) -> dict[str, torch.Tensor]:
        pick = self._pick(epoch, b)
        if self.cache is None:
            rows = self.capture(self.windows[pick], pick, stop)
        elif epoch == 0:
            rows = self.capture(self.windows[pick], pick, stop)
            with self._cache_lock:
                self._remember(pick, rows)
        else:
            self._fill_cache(stop)
            parts = [self.cache[int(w)] for w in pick]
            rows = {n: torch.cat([p[n] for p in parts]) for n in parts[0]}
        perm = torch.from_numpy(
            _rng(self.seed, epoch, b + 1).permutation(len(next(iter(rows.values()))))
        )
        return {name: x[perm] for name, x in rows.items()}

    def _buffer(self, epoch: int, b: int) -> dict[str, torch.Tensor]:
        # the initialisation sample and step 0 read the same buffer: capture it once
        if self._last is not None and self._last[0] == (epoch, b):
            return self._last[1]
        self._last = None
        ahead, self._ahead = self._ahead, None
        if ahead is not None and ahead.key == (epoch, b):
            out: dict[str, torch.Tensor] = ahead.get()  # type: ignore[assignment]
        else:
            if ahead is not None:
                ahead.cancel()
            out = self._make_buffer(epoch, b)
        self._last = ((epoch, b), out)
        return out

    def _prefetch_after(self, epoch: int, b: int) -> None:
        if not self.prefetch or self._ahead is not None:
            return
        key = self._next_key(epoch, b)
        self._ahead = _Prefetch(key, lambda stop: self._make_buffer(*key, stop))

    def close(self) -> None:
        """Stop a capture running ahead (the generator of `batches` calls it when closed)."""
        ahead, self._ahead = self._ahead, None
        if ahead is not None:
            ahead.cancel()

    def batches(self, start_step: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        step = start_step
        try:
            while True:
                epoch, within = divmod(step, self.batches_per_epoch)
                b, i0 = divmod(within, self.batches_per_buffer)
                buf = self._buffer(epoch, b)
                self._prefetch_after(epoch, b)
                for i in range(i0, self.batches_per_buffer):
                    yield {
                        n: x[i * self.batch_size : (i + 1) * self.batch_size]
                        for n, x in buf.items()
                    }
                    step += 1
        finally:
            self.close()

    def sample(self, n: int) -> dict[str, torch.Tensor]:
        buf = self._buffer(0, 0)
        return {name: x[:n] for name, x in buf.items()}
