"""``sktransfer predict``'s scoring: validated batches in, CSV rows out.

A batch of ``(id, item)`` pairs is validated first (:func:`prepare`: each image
decoded once, each text checked), bad items get an empty row and a message, and the
good ones are scored in one call of the model; :class:`Columns` says how each kind
of fitted estimator (single-label, multi-label, regression) becomes CSV columns.

An image path is opened without blocking and must be a regular file: a FIFO, socket
or device named ``x.png`` is a bad item, never read (it could block forever).
"""

from __future__ import annotations

import csv
import itertools
import os
import stat
import sys

from sktransfer.cli.errors import (
    ScoringError,
    Terminated,
    UsageError,
    resource_shortage,
    shortage_error,
)
from sktransfer.cli.sources import Bad

__all__ = ["Columns", "ScoringError", "call_size", "predict_stream", "prepare"]

_DECODED_BUDGET = 256 * 2**20  # decoded pixels kept per batch; beyond, the estimator re-reads
_CONTROL = (KeyboardInterrupt, SystemExit, GeneratorExit, Terminated)


def _batches(iterable, size):
    it = iter(iterable)
    while batch := list(itertools.islice(it, size)):
        yield batch


def modality_of(est):
    return getattr(est, "modality_", None) or getattr(est, "_modality", None)


MULTI_LABEL_SEPARATOR = ";"
#: items per model call when ``--batch-size`` is not given: enough texts for the length
#: sort to pad little, few enough decoded pixels in flight (each forward is a micro-batch)
DEFAULT_CHUNK = 256


class Columns:
    """How a fitted estimator's outputs become CSV columns after ``id``.

    Single-label: ``prediction`` (the label), then with ``proba`` one ``proba_<class>``
    column per class (from one ``predict_proba`` call). Multi-label: ``prediction`` lists
    the predicted labels (probability >= 0.5, as ``predict``) joined by ``;``, empty when
    none is predicted; ``proba_<label>`` as above. Regression (no ``proba``): ``prediction``
    for a model fitted on 1-D ``y``, else ``prediction_0`` ... ``prediction_<k-1>``, each
    value the shortest decimal that reads back as ``predict``'s float64.
    """

    def __init__(self, est, proba, model="the model"):
        self.kind = getattr(est, "target_type_", None)
        if self.kind is None and hasattr(est, "classes_"):  # saved before target_type_
            self.kind = "single_label"
        if self.kind == "regression":
            if proba:
                raise UsageError(
                    f"--proba needs a classifier; {model} holds a {type(est).__name__} "
                    "(a regressor: its predictions are the values)"
                )
            k = int(est.n_outputs_)
            self.header = (
                ["prediction"] if est.y_ndim_ == 1 else [f"prediction_{j}" for j in range(k)]
            )
            self.method = est.predict
        elif self.kind in ("single_label", "multi_label"):
            self.classes = list(est.classes_)
            self.header = ["prediction"] + ([f"proba_{c}" for c in self.classes] if proba else [])
            self.method = est.predict_proba
        else:
            raise UsageError(
                f"{model} holds a {type(est).__name__}, not a fitted classifier or regressor"
            )
        self.proba = proba

    def row(self, output):
        """The CSV cells of one item's ``predict_proba`` (or regressor ``predict``) row."""
        if self.kind == "regression":
            return [repr(float(v)) for v in output.reshape(-1)]  # (a 1-D y: a scalar)
        if self.kind == "single_label":
            cells = [self.classes[int(output.argmax())]]
        else:
            chosen = [str(c) for c, p in zip(self.classes, output) if p >= 0.5]
            cells = [MULTI_LABEL_SEPARATOR.join(chosen)]
        return cells + ([f"{p:.6g}" for p in output] if self.proba else [])


def call_size(est, requested):
    """Items per model call: ``requested``, rounded up to whole micro-batches when the
    model's inference micro-batch is automatic (256 images at 64 px: 294, six forwards of
    49, rather than five and a slow one of 11)."""
    from sktransfer.runtime.device import resolve_device
    from sktransfer.runtime.microbatch import inference_batch_size

    try:
        if est.get_params().get("inference_batch_size", 0) is not None:
            return requested  # forced (--batch-size), or not a sktransfer estimator
        device, kind = resolve_device(est.device), est.input_kind_
    except (AttributeError, ValueError):  # not a sktransfer estimator: its own batching
        return requested
    micro = inference_batch_size(None, kind, device, vars(est).get("preprocessing_"))
    return -(-int(requested) // micro) * micro


def _score(method, prepared):
    """Output rows of the good items of a prepared batch, in one call of ``method``."""
    ids = [ident for ident, item in prepared if not isinstance(item, Bad)]
    good = [item for _, item in prepared if not isinstance(item, Bad)]
    if not good:
        return []
    where = ids[0] if len(ids) == 1 else f"{ids[0]} ... {ids[-1]}"
    try:
        rows = method(good)
    except _CONTROL:
        raise
    except BaseException as exc:  # noqa: BLE001 - also pyo3's PanicException (tokenizers)
        kind = resource_shortage(exc)
        if kind is not None:
            raise shortage_error(kind, exc, f"scoring {where}") from exc
        raise ScoringError(
            f"the model failed on a batch of {len(good)} validated item(s) ({where}): "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    if len(rows) != len(good):
        raise ScoringError(f"the model returned {len(rows)} rows for {len(good)} items")
    return list(rows)


class _NoBar:
    """The progress bar's interface without a bar (and without tqdm's monitor thread)."""

    def write(self, text, file=None):
        print(text, file=file)

    def update(self, n):
        pass

    def close(self):
        pass


def _progress_bar(total, err):
    from tqdm.auto import tqdm

    tqdm.monitor_interval = 0  # no monitor thread: one less thread to run out of
    return tqdm(total=total, unit="item", file=err, dynamic_ncols=True)


def predict_stream(
    est, items, out, *, proba=False, batch_size=64, progress=True, err=None, total=None, guard=None
):
    """Score ``(id, item)`` pairs in batches and write CSV rows to ``out``.

    A batch holds ``batch_size`` items, rounded up to whole micro-batches of the model
    (:func:`call_size`).

    Each batch is validated first (:func:`sktransfer.cli.inputs.prepare`): bad
    items get an empty row and a message on ``err``; the good ones are scored in
    one ``predict_proba`` call (a regressor: ``predict``), whose failure raises
    :class:`ScoringError`. The columns are :class:`Columns`'.

    Returns
    -------
    (int, int)
        Number of items scored and number that failed.
    """
    err = err or sys.stderr
    modality = modality_of(est)
    columns = Columns(est, proba)
    writer = csv.writer(out)
    writer.writerow(["id", *columns.header])
    blank = [""] * len(columns.header)
    n_ok = n_bad = 0
    bar = _progress_bar(total, err) if progress else _NoBar()
    try:
        for batch in _batches(items, call_size(est, batch_size)):
            prepared = prepare(batch, modality, guard)
            rows = iter(_score(columns.method, prepared))
            for ident, item in prepared:
                if isinstance(item, Bad):
                    n_bad += 1
                    bar.write(f"sktransfer: error: {ident}: {item.message}", file=err)
                    writer.writerow([ident, *blank])
                    continue
                n_ok += 1
                writer.writerow([ident, *columns.row(next(rows))])
            out.flush()
            bar.update(len(batch))
    finally:
        bar.close()
    return n_ok, n_bad


# --------------------------------------------------------------------------- validation
def _open_regular(path, guard):
    """A binary file object for ``path``, which must be a regular file. Opened without
    blocking (a FIFO would wait for a writer), then checked on the open descriptor."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = "a FIFO" if stat.S_ISFIFO(st.st_mode) else "a directory, socket or device"
            raise ValueError(f"it is {kind}, not a regular file (not read)")
        if guard is not None and (st.st_dev, st.st_ino) == guard:
            raise UsageError(f"the output file is also an input ({path}): it would be overwritten")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _decode_image(path, guard):
    from PIL import Image

    from sktransfer.inputs.images import load_rgb

    try:
        with _open_regular(path, guard) as fh, Image.open(fh) as im:
            im.load()  # decode now, while the file is open
            return load_rgb(im)
    except UsageError:
        raise
    except Exception as exc:  # noqa: BLE001 - any decoder failure is this item's
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise ValueError(f"Image: cannot read image file {path!r}: {why}") from exc


def prepare(batch, modality, guard=None):
    """Decode (images) or check (texts) each item of a batch; a failure marks that item bad.

    Returns ``[(id, item or Bad)]``. Decoded images replace their paths (so they are
    decoded once) while the batch's decoded pixels stay under 256 MiB; later ones keep
    the path and are decoded again by the estimator. ``guard`` is the ``(dev, inode)``
    of the output file: an item that is that file is a usage error.
    """
    out, budget = [], _DECODED_BUDGET
    for ident, item in batch:
        if isinstance(item, Bad):
            out.append((ident, item))
        elif modality == "image" and isinstance(item, str):
            try:
                image = _decode_image(item, guard)
            except ValueError as exc:
                out.append((ident, Bad(str(exc))))
                continue
            size = image.width * image.height * 3
            keep = size <= budget
            budget -= size if keep else 0
            out.append((ident, image if keep else item))
        elif modality == "image" or isinstance(item, str):
            try:
                if isinstance(item, str):
                    item.encode("utf-8")
            except UnicodeEncodeError as exc:
                out.append((ident, Bad(f"not valid UTF-8 ({exc.reason})")))
                continue
            out.append((ident, item))
        else:
            out.append((ident, Bad(f"expected a text, got {type(item).__name__}")))
    return out
