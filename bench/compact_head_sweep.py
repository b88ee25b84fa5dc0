"""Compact preset: a head setting on the cached CUB maps, scored on the held-out training classes (validation).

The test split is scored once, for the record, with the head of the best validation epoch; settings were chosen
on the validation figures only. Needs the feature cache of `python bench/ablation.py --profile compact`
(runs/ablation/compact/features). Arguments: torch threads, variant, then train overrides (lr=0.01 epochs=15
optimizer=sgd) and model overrides prefixed with m. (m.bnneck=True m.cah_identity_init=False).

    python bench/compact_head_sweep.py 2 pt+cah m.bnneck=True
"""
import os, sys, time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.chdir(REPO)  # the cache and the dataset are named relative to the repository
from frpt.config import model_config, train_config
from frpt.data import build_dataset, build_transform
from frpt.models import build_model
from frpt.compact import train_head, embed_cached, validation_split, _score
from frpt.feature_cache import cache_split
torch.set_num_threads(int(sys.argv[1]))
variant = sys.argv[2]
over = {}; mover = {}
for a in sys.argv[3:]:
    if a.startswith('m.'):
        k, v = a[2:].split('='); mover[k] = v == 'True' if v in ('True', 'False') else float(v); continue
    k, v = a.split('=')
    over[k] = type(getattr(train_config('compact'), k))(v)
cfg = train_config('compact', **over)
root = '../shared/data/CUB_200_2011'; tf = build_transform(224, train=False)
tr_set = build_dataset('cub', 'train', root=root, transform=tf); te_set = build_dataset('cub', 'test', root=root, transform=tf)
torch.manual_seed(0)
m = build_model(model_config('compact', variant, num_classes=100, input_size=224, **mover)).eval()
views = m.config.view_list
tr = cache_split(m, tr_set, views, 'runs/ablation/compact/features', 'train', progress=False)
te = cache_split(m, te_set, views, 'runs/ablation/compact/features', 'test', progress=False)
tr.maps = {k: np.ascontiguousarray(v) for k, v in tr.maps.items()}
fit, val = validation_split(tr.labels, cfg.val_fraction)
t = time.time()
hist = train_head(m, tr, fit, cfg, cfg.epochs, val=val, progress=False)
best = max(hist, key=lambda r: (r['recall@1'], -r['epoch']))
print(variant, over, 'val by epoch', [(h['epoch'], round(100*h['recall@1'], 1), round(100*h['map@r'], 1)) for h in hist], flush=True)
e = embed_cached(m, te.maps, np.arange(len(te.labels)))
r = _score(e, te.labels)
print('RESULT', variant, over, 'best val epoch', best['epoch'], 'val', round(100*best['recall@1'], 1), round(100*best['map@r'], 1),
      '| test (fit-only head at best epoch)', round(100*r['recall@1'], 1), round(100*r['map@r'], 1), 'secs', round(time.time()-t), flush=True)
