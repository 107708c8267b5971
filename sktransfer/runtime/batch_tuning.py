"""Per-backbone calibration of the CPU image micro-batch, on the first real batches.

The CPU rule of :mod:`sktransfer.runtime.microbatch` is one pixel budget (4 images at
224 px), and no single budget suits every network: measured one thread at 224 px
(``benchmarks/bench_inference.py``), EfficientNet-Lite0's raw loop is fastest at batch 1-4
and ResNet-18's at 8 (5% above 4). So when an image micro-batch is automatic on the CPU,
the first batches of each (architecture, blocks run, image size, threads, layout,
precision) are *trials*: each candidate size around the rule's (a quarter of it to four
times it, within ``[1, 64]``: 1, 2, 4, 8, 16 at 224 px) runs :data:`REPS` times, the
forward of each batch is timed in CPU seconds of the process (``time.process_time``, as
the benchmarks: on a machine whose cores other processes share, wall time measured their
load more than the batch size), and the first run of a size is discarded (new shapes pay
for oneDNN's primitive creation and the heap's first growth). The size with the lowest
time per image wins if it beats the rule's size by :data:`MARGIN`, else the rule's size
stays. The choice is remembered for the process, so trials happen once: they span calls
(the CLI's calls of 64 images, the fits of a grid search) until every candidate is timed.
Trial batches are real batches (about 100 images at 224 px): their outputs are kept, no
forward is spent on calibration.

Only images whose rule's size is at most :data:`MAX_RULE` (about 112 px and more) are
calibrated. Measured (``bench_inference``, one thread, calibrated / rule's size in the same
run): at 224 px it chose 16 for ResNet-18, 1.10x and 1.15x the images/s of the rule's 4 in
two runs, and kept 4 for EfficientNet-Lite0 (1.0x). At 64 px (rule 49), the one run before
this restriction put ``sktransfer predict`` on 2,000 PNGs at 0.82x with it: the trials
(about 450 images there) and the odd batch shapes they leave in its 98-image calls (each
new shape pays for oneDNN's primitives) are a large share of a short run, for a rule that
is already near the 64-image clamp. (That CLI row reads 0.87 with both sides at the rule's
size in a later run, so the loss is within the CLI measurement's noise; the restriction
keeps the rule where a gain was never shown.)

The size is a scheduling choice: outputs are computed per sample and cached under a
namespace without it, equal across sizes up to float rounding (a real CNN's GEMM blocking
moves features by ~1e-6; a small CNN is bit-identical). Because timings decide the size,
two processes may choose differently; for run-to-run identical floats force a size
(``inference_batch_size``, an embedder's ``batch_size``) or set
``SKTRANSFER_BATCH_CALIBRATION=0`` (the rule's size then). Texts are not calibrated: their
batches are sorted by length, so per-batch times mix size with length, and MiniLM-L6 is
flat between 16 and 64 texts per batch. CUDA keeps its largest-that-fits rule.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
import weakref

import torch
from torch.utils.data import DataLoader, Sampler

from sktransfer.runtime.microbatch import IMAGE_BOUNDS, balanced, inference_batch_size

#: candidate sizes: the rule's size times these factors, clamped to the CPU bounds
FACTORS = (0.25, 0.5, 1.0, 2.0, 4.0)
#: timed runs per candidate; the first of each is a warm-up and discarded
REPS = 3
#: another size replaces the rule's only when it is this much faster per image
MARGIN = 0.03
#: calibrate only when the rule's size is at most this (images of about 112 px and more)
MAX_RULE = 16
ENV = "SKTRANSFER_BATCH_CALIBRATION"

_CALIBRATIONS: dict[tuple, Calibration] = {}
_LOCK = threading.Lock()
_KEYS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def enabled() -> bool:
    """Whether automatic CPU image micro-batches are calibrated (env ``ENV``)."""
    return os.environ.get(ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def candidates(rule: int) -> tuple[int, ...]:
    """Trial sizes around the rule's size ``rule`` (1, 2, 4, 8, 16 for 4)."""
    low, high = IMAGE_BOUNDS["cpu"]
    return tuple(sorted({min(high, max(low, round(rule * f))) for f in FACTORS}))


class Calibration:
    """Trial timings of one (architecture, blocks, image size, threads, layout, precision)."""

    def __init__(self, rule: int) -> None:
        self.rule = rule
        self.sizes = candidates(rule)
        self.issued = dict.fromkeys(self.sizes, 0)
        self.seconds = {s: [] for s in self.sizes}  # per image, warm-ups dropped
        self.runs = dict.fromkeys(self.sizes, 0)
        self.best: int | None = None if len(self.sizes) > 1 else rule
        self._lock = threading.Lock()

    def next_trial(self, remaining: int) -> int | None:
        """The next trial size that fits in ``remaining`` items, or ``None``."""
        with self._lock:
            if self.best is not None:
                return None
            open_ = [s for s in self.sizes if self.issued[s] < REPS and s <= remaining]
            if not open_:
                return None
            size = min(open_, key=lambda s: (self.issued[s], s))
            self.issued[size] += 1
            return size

    def observe(self, size: int, seconds: float) -> None:
        """Record one timed forward of a ``size``-image trial batch."""
        with self._lock:
            if self.best is not None or size not in self.runs:
                return
            self.runs[size] += 1
            if self.runs[size] > 1:  # the first run of a shape is a warm-up
                self.seconds[size].append(seconds / size)
            if all(len(v) >= REPS - 1 for v in self.seconds.values()):
                per_image = {s: min(v) for s, v in self.seconds.items()}
                fastest = min(per_image, key=per_image.get)
                keep = per_image[fastest] >= (1 - MARGIN) * per_image[self.rule]
                self.best = self.rule if keep else fastest

    def size(self) -> int:
        """The size to use now: the winner once decided, else the rule's."""
        return self.rule if self.best is None else self.best


def architecture_key(net, start=0, stop=None, head=False) -> str:
    """A digest of the modules that run (types and their settings, parameter shapes; not
    the weights, which do not change the time): blocks ``start:stop``, the pool when the
    run reaches the end, the head when ``head``."""
    blocks = list(net.blocks)
    stop = len(blocks) if stop is None else stop
    modules = blocks[start:stop] + ([net.pool] if stop >= len(blocks) else [])
    if head and getattr(net, "head", None) is not None:
        modules.append(net.head)
    digest = hashlib.blake2b(digest_size=16)
    for i, block in enumerate(modules):
        for name, mod in block.named_modules():
            shapes = [tuple(p.shape) for p in mod.parameters(recurse=False)]
            digest.update(f"{i}/{name}:{type(mod).__qualname__}({mod.extra_repr()}){shapes};"
                          .encode())  # fmt: skip
    return digest.hexdigest()


def _key(net, start, stop, head, rule, channels_last, precision):
    per_net = _KEYS.setdefault(net, {})
    arch = per_net.get((start, stop, head))
    if arch is None:  # (a module's structure does not change once fitted)
        arch = per_net[(start, stop, head)] = architecture_key(net, start, stop, head)
    return (arch, rule, torch.get_num_threads(), bool(channels_last), str(precision))


class CalibratingBatches(Sampler):
    """Batches of indices ``0..n-1`` in order: trial sizes while the calibration of the
    bound network is open, then the chosen size, balanced over what is left.

    Unbound (:meth:`bind` not called: a loop that does not time its forwards), it yields
    the rule's size, balanced, as a fixed-size loader would.
    """

    def __init__(self, n: int, rule: int) -> None:
        self.n, self.rule = int(n), int(rule)
        self.calibration: Calibration | None = None
        self._trials: list[int | None] = []

    def bind(self, net, start=0, stop=None, *, head=False, channels_last=False,
             precision="fp32") -> None:  # fmt: skip
        """Attach the calibration of ``net``'s run (created on first use, then shared)."""
        key = _key(net, start, stop, head, self.rule, channels_last, precision)
        with _LOCK:
            self.calibration = _CALIBRATIONS.get(key)
            if self.calibration is None:
                self.calibration = _CALIBRATIONS[key] = Calibration(self.rule)

    def __len__(self) -> int:
        return -(-self.n // max(1, self.rule))  # an estimate while trials run (progress bars)

    def __iter__(self):
        self._trials = []
        pos, cal = 0, self.calibration
        while pos < self.n:
            trial = cal.next_trial(self.n - pos) if cal is not None else None
            if trial is not None:
                size = trial
            else:
                size = balanced(self.rule if cal is None else cal.size(), self.n - pos)
            self._trials.append(trial)
            yield list(range(pos, min(self.n, pos + size)))
            pos += size

    def observe(self, seconds: float) -> None:
        """The forward of the oldest batch not yet observed took ``seconds``."""
        if self._trials:
            trial = self._trials.pop(0)
            if trial is not None:
                self.calibration.observe(trial, seconds)


def _own():
    """A generator of the loader's own: without one, every iteration of a ``DataLoader``
    draws its worker seed from torch's global generator, the caller's."""
    return torch.Generator()


def inference_loader(dataset, requested, kind, device, prep, collate, num_workers=0):
    """A loader of inference micro-batches: ``requested`` images/texts per batch when
    forced, else the device's rule (:func:`~sktransfer.runtime.microbatch.inference_batch_size`),
    calibrated for CPU images (see the module doc) once a timed loop binds it."""
    dev = torch.device(device)
    pin = dev.type == "cuda"
    size = inference_batch_size(requested, kind, dev, prep, n=len(dataset))
    if requested is not None or kind != "image" or dev.type != "cpu" or not enabled():
        return DataLoader(dataset, batch_size=size, shuffle=False, collate_fn=collate,
                          pin_memory=pin, num_workers=num_workers, generator=_own())  # fmt: skip
    rule = inference_batch_size(None, kind, dev, prep)
    if rule > MAX_RULE:  # small images: the rule's batch, balanced
        return DataLoader(dataset, batch_size=size, shuffle=False, collate_fn=collate,
                          pin_memory=pin, num_workers=num_workers, generator=_own())  # fmt: skip
    sampler = CalibratingBatches(len(dataset), rule)
    return DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, pin_memory=pin,
                      num_workers=num_workers, generator=_own())  # fmt: skip


class Timer:
    """Times each forward (CPU seconds) of a loop over ``loader`` when its batches
    calibrate; else free."""

    def __init__(self, loader, net, start=0, stop=None, *, head=False, channels_last=False,
                 precision="fp32") -> None:  # fmt: skip
        sampler = getattr(loader, "batch_sampler", None)
        self.sampler = sampler if isinstance(sampler, CalibratingBatches) else None
        if self.sampler is not None:
            self.sampler.bind(net, start, stop, head=head, channels_last=channels_last,
                              precision=precision)  # fmt: skip
        self._t0 = 0.0

    def __enter__(self):
        if self.sampler is not None:
            self._t0 = time.process_time()
        return self

    def __exit__(self, *exc):
        if self.sampler is not None and exc[0] is None:
            self.sampler.observe(time.process_time() - self._t0)
        return False


def reset() -> None:
    """Forget every calibration (tests; a process whose machine load changed)."""
    with _LOCK:
        _CALIBRATIONS.clear()
