"""Image folders: :func:`load_image_folder` lists a class-per-subfolder layout.

Re-exported by :mod:`sktransfer.inputs.images` and :mod:`sktransfer.data`.
"""

from __future__ import annotations

from pathlib import Path

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def load_image_folder(root, extensions=IMAGE_EXTENSIONS):
    """List images in a class-per-subfolder layout (``root/<label>/**/<file>``).

    Parameters
    ----------
    root : str or Path
        The folder holding one subfolder per class.
    extensions : tuple of str
        File extensions to keep (case-insensitive).

    Returns
    -------
    paths : list of str
        Image paths, sorted by class then relative path.
    labels : list of str
        The class folder name of each path.
    """
    root_p = Path(root)
    if not root_p.is_dir():
        raise ValueError(f"Image folder {str(root)!r} does not exist or is no folder.")
    if isinstance(extensions, str):
        extensions = (extensions,)
    exts = {e.lower() if e.startswith(".") else "." + e.lower() for e in extensions}
    classes = sorted(d for d in root_p.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise ValueError(f"No class subfolders found in {str(root)!r}.")
    paths, labels = [], []
    for d in classes:
        files = sorted(
            (p for p in d.rglob("*") if p.suffix.lower() in exts and p.is_file()),
            key=lambda p: p.relative_to(d).as_posix(),
        )
        paths.extend(str(p) for p in files)
        labels.extend([d.name] * len(files))
    if not paths:
        msg = f"No image files ({sorted(exts)}) in the class folders of {str(root)!r}."
        raise ValueError(msg)
    return paths, labels
