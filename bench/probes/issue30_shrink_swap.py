"""Issue 30 diagnostic: each compact checkpoint's whitening refitted on every training class at shrinkage 0.7 and
0.9 and the test split scored from the feature cache, to compare two runs at the same shrinkage (a test-set look
at settings validation did not choose; it chooses nothing).

    python bench/probes/issue30_shrink_swap.py runs/issue30/retrain288/checkpoint runs/issue30/zoom288/checkpoint

Reads the 288 px cache runs/issue30/features-288 (CUB at ../shared/data/CUB_200_2011). cache_split holds every view
of a split in memory: six views of both splits at 288 px take ~15 GB.
"""
import json
import sys

import numpy as np
import torch

sys.path.insert(0, ".")
from frpt.checkpoint import load_checkpoint  # noqa: E402
from frpt.compact import _head_vectors, embed_cached  # noqa: E402
from frpt.data import build_dataset, build_transform  # noqa: E402
from frpt.feature_cache import cache_split  # noqa: E402
from frpt.metrics import map_at_r, recall_at_k  # noqa: E402

torch.set_num_threads(2)
out = {}
for ckpt in sys.argv[1:]:
    model, card = load_checkpoint(ckpt)
    tf = build_transform(288, train=False)
    root = "../shared/data/CUB_200_2011"
    tr = cache_split(model, build_dataset("cub", "train", root=root, transform=tf), model.config.view_list,
                     "runs/issue30/features-288", "train", precision="auto", progress=False)
    te = cache_split(model, build_dataset("cub", "test", root=root, transform=tf), model.config.view_list,
                     "runs/issue30/features-288", "test", precision="auto", progress=False)
    x, y = _head_vectors(model, tr.maps, np.arange(len(tr.labels)), tr.labels)
    for shrink in (0.7, 0.9):
        model.head.whitening.fit(x, y, shrink)
        emb = embed_cached(model, te.maps, np.arange(len(te.labels)))
        r = {**recall_at_k(emb, te.labels, (1,)), "map@r": map_at_r(emb, te.labels)}
        out[f"{ckpt} {shrink}"] = r
        print(ckpt, shrink, {k: round(100 * v, 2) for k, v in r.items()}, flush=True)
json.dump(out, open("runs/issue30/diag/shrink_swap.json", "w"), indent=1)
