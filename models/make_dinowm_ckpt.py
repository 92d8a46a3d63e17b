#!/usr/bin/env python3
"""Write a randomly initialised DINO-WM training run in DINO-WM's own on-disk format, to test the
exporter without the released weights (which cannot be downloaded here).

    python models/make_dinowm_ckpt.py --out RUN_DIR [--preset full|tiny] [--num-hist 1] [--train-encoder]

RUN_DIR gets what DINO-WM's train.py leaves: hydra.yaml (the resolved config) and
checkpoints/model_latest.pth, a dict of whole pickled modules whose classes carry DINO-WM's and
DINOv2's module paths (models.vit.ViTPredictor, models.proprio.ProprioceptiveEmbedding,
dinov2.models.vision_transformer.DinoVisionTransformer, ...), plus a decoder of a class the exporter
does not know (models.vqvae.VQVAE) and an optimizer, as a real run has. The frozen encoder is saved
apart as a DINOv2 state_dict (dinov2_<arch>.pth), as the hub's pretrained file is, unless
--train-encoder puts the encoder module into the checkpoint. stats.json holds a normalization.
"""
import argparse
import json
import os
import sys
import types

import torch
import torch.nn as nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dinowm_modules as dm  # noqa: E402

PRESETS = {
    # DINO-WM's Wall model: DINOv2 ViT-S/14 at 224 -> 196 px, predictor depth 6, 16 heads, MLP 2048.
    "full": dict(encoder="dinov2_vits14", img_size=224, depth=6, heads=16, mlp_dim=2048, dim_head=64),
    # The same structure in miniature (4 patches, 48-wide encoder) for qwm's committed test bundle.
    "tiny": dict(encoder="qwm_test_tiny14", img_size=32, depth=2, heads=2, mlp_dim=64, dim_head=16),
}

PICKLE_NAMES = {
    dm.ViTPredictor: ("models.vit", "ViTPredictor"), dm.Transformer: ("models.vit", "Transformer"),
    dm.Attention: ("models.vit", "Attention"), dm.FeedForward: ("models.vit", "FeedForward"),
    dm.ProprioceptiveEmbedding: ("models.proprio", "ProprioceptiveEmbedding"),
    dm.DinoV2Encoder: ("models.dino", "DinoV2Encoder"),
    dm.DinoVisionTransformer: ("dinov2.models.vision_transformer", "DinoVisionTransformer"),
    dm.Block: ("dinov2.layers.block", "NestedTensorBlock"),
    dm.DinoAttention: ("dinov2.layers.attention", "MemEffAttention"),
    dm.Mlp: ("dinov2.layers.mlp", "Mlp"), dm.LayerScale: ("dinov2.layers.layer_scale", "LayerScale"),
    dm.PatchEmbed: ("dinov2.layers.patch_embed", "PatchEmbed"),
}


class VQVAE(nn.Module):
    """Stands for DINO-WM's decoder (models.vqvae.VQVAE), which the exporter must skip."""

    def __init__(self):
        super().__init__()
        self.dec = nn.Linear(8, 8)


def save_as_dinowm(obj, path):
    """torch.save with the classes presenting DINO-WM's module paths (as if DINO-WM's code had been
    imported), restored afterwards."""
    saved, fake = {}, {}
    names = dict(PICKLE_NAMES)
    names[VQVAE] = ("models.vqvae", "VQVAE")
    try:
        for cls, (mod, name) in names.items():
            saved[cls] = (cls.__module__, cls.__qualname__, cls.__name__)
            parts = mod.split(".")
            for i in range(1, len(parts) + 1):
                m = ".".join(parts[:i])
                if m not in sys.modules:
                    fake[m] = sys.modules[m] = types.ModuleType(m)
            setattr(sys.modules[mod], name, cls)
            cls.__module__, cls.__qualname__, cls.__name__ = mod, name, name
        torch.save(obj, path)
    finally:
        for cls, (mod, qual, name) in saved.items():
            cls.__module__, cls.__qualname__, cls.__name__ = mod, qual, name
        for m in fake:
            del sys.modules[m]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="full")
    ap.add_argument("--num-hist", type=int, default=1, help="DINO-WM's Wall checkpoint uses 1, its default is 3")
    ap.add_argument("--train-encoder", action="store_true", help="put the encoder module in the checkpoint")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    p = PRESETS[a.preset]
    torch.manual_seed(a.seed)
    vit = dm.dinov2(p["encoder"])
    with torch.no_grad():  # DINOv2's init: truncated normal position embedding, small cls token
        nn.init.trunc_normal_(vit.pos_embed, std=0.02)
        nn.init.normal_(vit.cls_token, std=1e-6)
        for blk in vit.blocks:  # learned layer scales are far below 1 in DINOv2
            blk.ls1.gamma.uniform_(0.05, 0.5)
            blk.ls2.gamma.uniform_(0.05, 0.5)
    encoder = dm.DinoV2Encoder(p["encoder"], "x_norm_patchtokens", base_model=vit)
    side = p["img_size"] // 16
    frameskip, action_dim, proprio_dim, emb = 5, 2, 2, 10
    dim = vit.embed_dim + 2 * emb
    predictor = dm.ViTPredictor(num_patches=side * side, num_frames=a.num_hist, dim=dim, depth=p["depth"],
                                heads=p["heads"], mlp_dim=p["mlp_dim"], dim_head=p["dim_head"], dropout=0.1)
    proprio_encoder = dm.ProprioceptiveEmbedding(num_frames=1, tubelet_size=1, in_chans=proprio_dim, emb_dim=emb)
    action_encoder = dm.ProprioceptiveEmbedding(num_frames=1, tubelet_size=1, in_chans=action_dim * frameskip,
                                                emb_dim=emb)
    cfg = {
        "env": {"name": "wall"}, "img_size": p["img_size"], "frameskip": frameskip, "concat_dim": 1,
        "normalize_action": True, "action_emb_dim": emb, "num_action_repeat": 1, "proprio_emb_dim": emb,
        "num_proprio_repeat": 1, "num_hist": a.num_hist, "num_pred": 1, "has_predictor": True, "has_decoder": True,
        "encoder": {"_target_": "models.dino.DinoV2Encoder", "name": p["encoder"], "feature_key": "x_norm_patchtokens"},
        "predictor": {"_target_": "models.vit.ViTPredictor", "depth": p["depth"], "heads": p["heads"],
                      "mlp_dim": p["mlp_dim"], "dim_head": p["dim_head"], "dropout": 0.1, "emb_dropout": 0,
                      "pool": "mean"},
        "action_encoder": {"_target_": "models.proprio.ProprioceptiveEmbedding", "num_frames": 1, "tubelet_size": 1,
                           "use_3d_pos": False},
        "proprio_encoder": {"_target_": "models.proprio.ProprioceptiveEmbedding", "num_frames": 1,
                            "tubelet_size": 1, "use_3d_pos": False},
        "model": {"_target_": "models.visual_world_model.VWorldModel", "image_size": p["img_size"],
                  "num_hist": a.num_hist, "num_pred": 1, "train_encoder": a.train_encoder, "train_predictor": True,
                  "train_decoder": True},
    }
    os.makedirs(os.path.join(a.out, "checkpoints"), exist_ok=True)
    import yaml
    with open(os.path.join(a.out, "hydra.yaml"), "w") as f:
        yaml.safe_dump(cfg, f, sort_keys=False)
    opt = torch.optim.AdamW(predictor.parameters(), lr=5e-4)
    ckpt = {"epoch": 100, "predictor": predictor, "predictor_optimizer": opt, "decoder": VQVAE(),
            "action_encoder": action_encoder, "proprio_encoder": proprio_encoder}
    if a.train_encoder:
        ckpt["encoder"] = encoder
    else:
        torch.save(vit.state_dict(), os.path.join(a.out, f"{p['encoder']}.pth"))
    save_as_dinowm(ckpt, os.path.join(a.out, "checkpoints", "model_latest.pth"))
    with open(os.path.join(a.out, "stats.json"), "w") as f:
        json.dump({"action_mean": [0.0, 0.0], "action_std": [0.84, 0.75], "proprio_mean": [32.5, 33.6],
                   "proprio_std": [13.2, 13.8], "action_low": [-2.45, -2.45], "action_high": [2.45, 2.45]}, f, indent=2)
    n_enc = sum(t.numel() for t in vit.parameters())
    n_pred = sum(t.numel() for t in predictor.parameters())
    print(f"wrote {a.out}: encoder {p['encoder']} {n_enc / 1e6:.2f} M params, predictor {n_pred / 1e6:.2f} M, "
          f"num_hist {a.num_hist}")


if __name__ == "__main__":
    main()
