"""Batched, tiled inference of an image-to-image model over a stream of images.

Images of any size are padded to the model's stride; small ones run whole and large ones as
overlapping windows (:mod:`imageae.pipelines.tiling`). Windows of the same shape, from one
image or from several, are stacked into batches for a compiled ``tf.function`` call, so a
folder of equally sized photos runs in full batches and a 6000x4000 photo runs in bounded
memory. The results equal whole-image inference (tests check this).
"""

import dataclasses

import numpy as np

from imageae.pipelines.tiling import pad_to_multiple, plan_tiles, round_up


@dataclasses.dataclass
class _Job:
    key: object
    planes: np.ndarray  # (P, Hp, Wp, C) padded float32 inputs
    out: np.ndarray  # (P, Hp, Wp, C) float32 results
    height: int
    width: int
    todo: int
    fold: object  # how to turn planes back into an (H, W, C) image
    level: object = None  # the noise level for a model that takes one (None: the model's own)


def _prepare_layout(x, model_channels):
    """Arrange an (H, W, C) image as model inputs: planes of ``model_channels`` channels."""
    c = x.shape[-1]
    if c == model_channels:
        return x[None], lambda y: y[0]
    if model_channels == 1:  # each colour channel through a grey model
        return np.moveaxis(x, -1, 0)[..., None], lambda y: np.moveaxis(y[..., 0], 0, -1)
    if c == 1 and model_channels == 3:  # grey through a colour model, averaged back
        return np.repeat(x, 3, axis=-1)[None], lambda y: y[0].mean(axis=-1, keepdims=True)
    raise ValueError(f"a {model_channels}-channel model cannot process a {c}-channel image")


class TiledRunner:
    """Runs ``model`` (float (N, H, W, C) -> float) on images of any size, in batches.

    Parameters
    ----------
    model : keras.Model
        A fully convolutional model with ``stride`` and ``receptive_radius`` attributes.
    tile : int
        Window size; images whose padded sides are both at most this run whole.
    batch_size : int
        Windows per model call.
    """

    def __init__(self, model, *, tile=1024, batch_size=4):
        import tensorflow as tf

        self.model = model
        self.stride = int(model.stride)
        self.margin = round_up(model.receptive_radius, self.stride)
        self.tile = round_up(max(int(tile), 2 * self.margin + self.stride), self.stride)
        self.batch_size = max(1, int(batch_size))
        self.channels = int(model.channels)
        self._call = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
        self._call_level = tf.function(lambda x, level: model((x, level), training=False), reduce_retracing=True)

    def predict(self, batch, levels=None):
        """Run the model on a float32 (N, H, W, C) batch whose sides are stride multiples;
        ``levels`` (N,) are the noise levels for a model that takes one."""
        batch = np.ascontiguousarray(batch, np.float32)
        if levels is None:
            return np.asarray(self._call(batch), np.float32)
        return np.asarray(self._call_level(batch, np.asarray(levels, np.float32)), np.float32)

    def run(self, items, *, max_pending=None):
        """Process ``(key, image)`` pairs, image float (H, W, C); yield ``(key, result)``.
        An item may also be ``(key, image, level)``: the noise level (0..1 scale) given to a
        model that takes one.

        Results come as soon as each image is complete, not necessarily in input order.
        At most ``max_pending`` images (default: twice the batch size) wait for a batch to
        fill before partial batches are run, which bounds memory on mixed-size folders.
        """
        max_pending = max_pending or 2 * self.batch_size
        buckets = {}  # window shape -> list of (job, plane, window box, core box)
        jobs = 0
        for key, x, *level in items:
            x = np.asarray(x, np.float32)
            planes, fold = _prepare_layout(x, self.channels)
            if len(planes) == 1:  # no copy when the image is already a multiple of the stride
                padded = pad_to_multiple(planes[0], self.stride)[None]
            else:
                padded = np.stack([pad_to_multiple(p, self.stride) for p in planes])
            hp, wp = padded.shape[1:3]
            tiles = plan_tiles(hp, wp, window=self.tile, margin=self.margin)
            job = _Job(key, padded, np.empty_like(padded), x.shape[0], x.shape[1], len(tiles) * len(padded), fold,
                       level[0] if level else None)
            jobs += 1
            for plane in range(len(padded)):
                for box, core in tiles:
                    shape = (box[1] - box[0], box[3] - box[2])
                    bucket = buckets.setdefault(shape, [])
                    bucket.append((job, plane, box, core))
                    if len(bucket) == self.batch_size:
                        yield from self._flush(buckets.pop(shape))
            if jobs >= max_pending:
                for shape in list(buckets):
                    yield from self._flush(buckets.pop(shape))
                jobs = 0
        for shape in list(buckets):
            yield from self._flush(buckets.pop(shape))

    def _flush(self, entries):
        batch = np.stack([job.planes[p, y0:y1, x0:x1] for job, p, (y0, y1, x0, x1), _ in entries])
        levels = [job.level for job, *_ in entries]
        result = self.predict(batch) if levels[0] is None else self.predict(batch, levels)
        for (job, p, (y0, _, x0, _), (cy0, cy1, cx0, cx1)), y in zip(entries, result):
            job.out[p, cy0:cy1, cx0:cx1] = y[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0]
            job.todo -= 1
            if job.todo == 0:
                yield job.key, job.fold(job.out[:, : job.height, : job.width])
