"""The peers of bench_metrics.py, timed in their own environment (``make bench-env``: scikit-video, pypiqe,
OpenCV, none of which this package needs): ``python peer_metrics.py IMAGES.npy THREADS`` prints one JSON object,
``{peer: {"metric", "ms_one", "ms_batch", "score"}}``, for uint8 RGB images (N, H, W, 3).

scikit-video 1.1.11 predates numpy 1.24 and scipy 1.3: the removed ``np.float``-style aliases are restored and
``scipy.misc.imresize`` (bicubic, mode "F", which its NIQE calls) is supplied through Pillow, as users of it do.
"""

from __future__ import annotations

import json
import os
import sys
import time

THREADS = sys.argv[2] if len(sys.argv) > 2 else "1"
for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[variable] = THREADS

import numpy as np  # noqa: E402  (after the thread settings)

for alias, kind in (("float", float), ("int", int), ("bool", bool), ("complex", complex), ("object", object)):
    if alias not in np.__dict__:
        setattr(np, alias, kind)


def _imresize(image, scale, interp="bicubic", mode="F"):
    from PIL import Image

    height, width = image.shape[:2]
    size = (int(round(width * scale)), int(round(height * scale)))
    return np.asarray(Image.fromarray(np.asarray(image, dtype=np.float32), mode="F").resize(size, Image.BICUBIC))


def luma(batch: np.ndarray) -> np.ndarray:
    """Grey frames (N, H, W) in [0, 255] of uint8 RGB images, as scikit-video's NIQE takes them."""
    return batch.astype(np.float64) @ np.array([0.299, 0.587, 0.114])


def timed(function, images) -> tuple[float, float, float]:
    """(ms per image one at a time, ms per image for the whole batch when the peer takes batches, else the same
    figure, mean score)."""
    function(images[:1])
    start = time.perf_counter()
    scores = [function(images[i : i + 1]) for i in range(len(images))]
    one = 1000 * (time.perf_counter() - start) / len(images)
    return one, one, float(np.mean(scores))


def main() -> None:
    images = np.load(sys.argv[1])
    results = {}
    try:
        import scipy.misc

        scipy.misc.imresize = _imresize
        import skvideo.measure

        def niqe_one(batch):
            return float(np.mean(skvideo.measure.niqe(luma(batch))))

        one, _, score = timed(niqe_one, images)
        start = time.perf_counter()
        skvideo.measure.niqe(luma(images))
        batch = 1000 * (time.perf_counter() - start) / len(images)
        results["scikit-video niqe"] = {"metric": "niqe", "ms_one": one, "ms_batch": batch, "score": score}
    except ImportError as error:
        results["scikit-video niqe"] = {"metric": "niqe", "error": str(error)}
    try:
        from pypiqe import piqe

        one, batch, score = timed(lambda batch: piqe(batch[0])[0], images)
        results["pypiqe piqe"] = {"metric": "piqe", "ms_one": one, "ms_batch": batch, "score": score}
    except ImportError as error:
        results["pypiqe piqe"] = {"metric": "piqe", "error": str(error)}
    try:
        import cv2

        cv2.setNumThreads(int(THREADS))

        def laplacian(batch):  # the variance-of-Laplacian sharpness of OpenCV tutorials
            grey = cv2.cvtColor(batch[0], cv2.COLOR_RGB2GRAY)
            return cv2.Laplacian(grey, cv2.CV_64F).var()

        one, batch, score = timed(laplacian, images)
        results["OpenCV Laplacian variance"] = {"metric": "sharpness", "ms_one": one, "ms_batch": batch, "score": score}
        kernel = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], dtype=np.float64)

        def immerkaer(batch):  # Immerkaer's noise estimate with OpenCV's filter
            grey = cv2.cvtColor(batch[0], cv2.COLOR_RGB2GRAY).astype(np.float64)
            response = np.abs(cv2.filter2D(grey, cv2.CV_64F, kernel)[1:-1, 1:-1])
            height, width = grey.shape
            return np.sqrt(np.pi / 2) * response.sum() / (6 * (width - 2) * (height - 2))

        one, batch, score = timed(immerkaer, images)
        results["OpenCV Immerkaer noise"] = {"metric": "noise", "ms_one": one, "ms_batch": batch, "score": score}
    except ImportError as error:
        results["OpenCV"] = {"metric": "sharpness", "error": str(error)}
    print(json.dumps(results))


if __name__ == "__main__":
    main()
