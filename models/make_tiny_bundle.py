"""A tiny, randomly initialised bundle with a 3-frame history, for the runtime's tests.

  python models/make_tiny_bundle.py --out tests/data/tiny_h3
It exercises the frame-causal predictor with num_hist > 1 (the shipped Wall model uses 1).
"""
import argparse, math
import torch
import torch.nn as nn
from wm import ViTEncoder, Predictor, ObservationEncoder
from bundle_io import export_bundle

ap = argparse.ArgumentParser()
ap.add_argument("--out", required=True)
ap.add_argument("--seed", type=int, default=3)
args = ap.parse_args()
torch.manual_seed(args.seed)
S, H, fs = 32, 3, 5
vit = ViTEncoder(image_size=S, patch=16, dim=16, depth=1, heads=2)
prop = nn.Conv1d(2, 10, 1)
pred = Predictor(vit.num_patches, 16, H, depth=1, heads=2, dim_head=8, mlp_dim=32, action_in=2 * fs)
obs = ObservationEncoder(vit, prop)
g = torch.Generator().manual_seed(args.seed)
fixture = {"pixels": torch.rand(4, 3, S, S, generator=g) * 2 - 1, "proprio": torch.randn(4, 2, generator=g),
           "action": torch.randn(4, H, 2 * fs, generator=g)}
parity = export_bundle(obs, pred, args.out, name="tiny_h3", env="wall", image_size=S, num_patches=vit.num_patches,
                       visual_dim=16, num_hist=H, frameskip=fs, action_dim=2, proprio_dim=2,
                       action_mean=[0.0, 0.0], action_std=[0.7, 0.7], proprio_mean=[32.0, 32.0], proprio_std=[15.0, 15.0],
                       fixture_inputs=fixture, training={"note": "random weights, seed %d, for tests only" % args.seed})
print("parity (onnxruntime vs torch, max abs):", parity)
