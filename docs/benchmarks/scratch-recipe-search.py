"""Recipe search for the scratch CNN on NEU (5-fold), backend-agnostic Keras (jax on GPU here)."""
import json
import os
import sys
import time

import numpy as np

os.environ.setdefault("KERAS_BACKEND", "jax")
import keras  # noqa: E402
from keras import layers, ops  # noqa: E402
from sklearn.model_selection import StratifiedKFold  # noqa: E402


class TextureAugment(layers.Layer):
    """Per-image random D4 symmetry, reflect-shift, gain; exact index ops."""

    def __init__(self, shift=0.1, gain=0.1, seed=0, **kw):
        super().__init__(**kw)
        self.shift, self.gain = shift, gain
        self.gen = keras.random.SeedGenerator(seed)

    def call(self, x, training=None):
        if not training:
            return x
        n = ops.shape(x)[0]
        s = x.shape[1]
        u = keras.random.uniform((n, 3), seed=self.gen)
        flip_h = ops.reshape(u[:, 0] < 0.5, (-1, 1, 1, 1))
        flip_v = ops.reshape(u[:, 1] < 0.5, (-1, 1, 1, 1))
        swap = ops.reshape(u[:, 2] < 0.5, (-1, 1, 1, 1))
        x = ops.where(flip_h, ops.flip(x, axis=2), x)
        x = ops.where(flip_v, ops.flip(x, axis=1), x)
        x = ops.where(swap, ops.transpose(x, (0, 2, 1, 3)), x)
        if self.shift > 0:
            m = int(round(self.shift * s))
            sh = keras.random.randint((n, 2), -m, m + 1, seed=self.gen)
            base = ops.arange(s)
            rows = base[None, :] + sh[:, :1]
            cols = base[None, :] + sh[:, 1:]
            period = 2 * (s - 1)

            def reflect(i):
                i = ops.mod(i, period)
                return ops.where(i >= s, period - i, i)
            rows, cols = reflect(rows), reflect(cols)
            x = ops.take_along_axis(x, ops.reshape(rows, (-1, s, 1, 1)) * ops.ones_like(x, dtype="int32"), axis=1)
            x = ops.take_along_axis(x, ops.reshape(cols, (-1, 1, s, 1)) * ops.ones_like(x, dtype="int32"), axis=2)
        if self.gain > 0:
            g = 1.0 + self.gain * (2.0 * keras.random.uniform((n, 1, 1, 1), seed=self.gen) - 1.0)
            x = ops.clip(x * g, 0.0, 255.0)
        return x


def build(r, side, n_classes, seed):
    inputs = keras.Input((side, side))
    x = layers.Reshape((side, side, 1))(inputs)
    if r.get("augment"):
        x = TextureAugment(r.get("shift", 0.1), r.get("gain", 0.1), seed)(x)
    x = layers.Rescaling(1 / 255.0)(x)
    if r.get("downscale", 1) > 1:
        x = layers.AveragePooling2D(r["downscale"])(x)
    bn = r.get("bn", False)
    pad = "same" if bn else "valid"
    for i, f in enumerate(r["filters"]):
        for _ in range(r.get("convs", 1)):
            stride = 2 if (i == 0 and r.get("stem_stride", 1) == 2 and _ == 0) else 1
            x = layers.Conv2D(f, r.get("k", 3), strides=stride, padding=pad, use_bias=not bn)(x)
            if bn:
                x = layers.BatchNormalization(momentum=r.get('bnm', 0.99))(x)
            x = layers.ReLU()(x)
        x = layers.MaxPooling2D(2)(x)
    if r.get("gap"):
        x = layers.GlobalAveragePooling2D()(x)
    else:
        x = layers.Flatten()(x)
        x = layers.Dense(r.get("dense", 256), activation="relu")(x)
    x = layers.Dropout(r.get("dropout", 0.2), seed=seed)(x)
    out = layers.Dense(n_classes, activation="softmax")(x)
    return keras.Model(inputs, out)


def run(r, images, labels, folds=5, seed=42):
    skf = StratifiedKFold(folds, shuffle=True, random_state=seed)
    accs, times = [], []
    for k, (tr, te) in enumerate(skf.split(images, labels)):
        keras.utils.set_random_seed(seed)
        model = build(r, images.shape[1], 6, seed)
        epochs, bs = r["epochs"], r["bs"]
        steps = epochs * int(np.ceil(len(tr) / bs))
        lr = r.get("lr", 1e-3)
        if r.get("schedule") == "cosine":
            warm = int(np.ceil(len(tr) / bs))
            sched = keras.optimizers.schedules.CosineDecay(lr * 0.1, max(1, steps - warm), alpha=0.01, warmup_target=lr,
                                                           warmup_steps=warm)
        else:
            sched = lr
        opt = keras.optimizers.AdamW(sched, weight_decay=r.get("wd", 0.0)) if r.get("wd") else keras.optimizers.Adam(sched)
        smooth = r.get("smooth", 0.0)
        loss = keras.losses.CategoricalCrossentropy(label_smoothing=smooth)
        model.compile(opt, loss, metrics=["accuracy"])
        y = keras.utils.to_categorical(labels, 6)
        t = time.time()
        model.fit(images[tr].astype("float32"), y[tr], batch_size=bs, epochs=epochs, verbose=0, shuffle=True)
        times.append(time.time() - t)
        p = model.predict(images[te].astype("float32"), batch_size=256, verbose=0).argmax(1)
        accs.append(float((p == labels[te]).mean()))
        print(f"  fold {k}: {accs[-1]:.4f} ({times[-1]:.0f}s)", flush=True)
        if r.get("one_fold"):
            break
    return accs, times, model.count_params()


R = {
    "book": dict(filters=[32, 64, 128], epochs=30, bs=16),
    "bn_gap_aug": dict(filters=[32, 64, 128, 256], bn=True, gap=True, augment=True, epochs=30, bs=32,
                       schedule="cosine", lr=3e-3, smooth=0.1),
    "bn_gap_noaug": dict(filters=[32, 64, 128, 256], bn=True, gap=True, epochs=30, bs=32, schedule="cosine", lr=3e-3,
                         smooth=0.1),
    "bn_gap_aug_ds2": dict(filters=[32, 64, 128, 256], bn=True, gap=True, augment=True, epochs=30, bs=32,
                           schedule="cosine", lr=3e-3, smooth=0.1, downscale=2),
    "bn_gap_aug_small": dict(filters=[16, 32, 64, 128], bn=True, gap=True, augment=True, epochs=30, bs=32,
                             schedule="cosine", lr=3e-3, smooth=0.1),
    "bn_gap_aug_stem2": dict(filters=[32, 64, 128, 256], bn=True, gap=True, augment=True, epochs=30, bs=32,
                             schedule="cosine", lr=3e-3, smooth=0.1, stem_stride=2),
    "bn_gap_aug_e15": dict(filters=[32, 64, 128, 256], bn=True, gap=True, augment=True, epochs=15, bs=32,
                           schedule="cosine", lr=3e-3, smooth=0.1),
    "book_aug_bn": dict(filters=[32, 64, 128], bn=True, augment=True, epochs=30, bs=32, schedule="cosine", lr=1e-3,
                        smooth=0.1),
}

_B = dict(filters=[32, 64, 128, 256], bn=True, gap=True, augment=True, epochs=30, bs=32, schedule="cosine", lr=3e-3,
          smooth=0.1, downscale=2)
R.update({
    "ds2_noaug": {**_B, "augment": False},
    "ds2_e20": {**_B, "epochs": 20},
    "ds2_lr1e3": {**_B, "lr": 1e-3},
    "ds2_nosmooth": {**_B, "smooth": 0.0},
    "m9_noaug_e30": {**_B, "augment": False, "bnm": 0.9},
    "m9_noaug_e20": {**_B, "augment": False, "bnm": 0.9, "epochs": 20},
    "m9_noaug_e15": {**_B, "augment": False, "bnm": 0.9, "epochs": 15},
    "m9_aug_e30": {**_B, "bnm": 0.9},
})

if __name__ == "__main__":
    z = np.load(sys.argv[1])
    images, labels = z["images"], z["labels"]
    names = sys.argv[3:] or list(R)
    out = {}
    for name in names:
        print(name, R[name], flush=True)
        t = time.time()
        accs, times, n_params = run(R[name], images, labels)
        out[name] = dict(recipe=R[name], accs=accs, mean=float(np.mean(accs)), sd=float(np.std(accs, ddof=1)) if len(accs) > 1 else 0,
                         min=float(np.min(accs)), seconds=times, params=n_params)
        print(f"{name}: mean {out[name]['mean']:.4f} sd {out[name]['sd']:.4f} min {out[name]['min']:.4f} "
              f"({time.time() - t:.0f}s)", flush=True)
        with open(sys.argv[2], "w") as f:
            json.dump(out, f, indent=1)
