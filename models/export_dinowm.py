#!/usr/bin/env python3
"""Export a DINO-WM training run (its hydra.yaml and checkpoint) to a qwm bundle, parity-checked.

    python models/export_dinowm.py --ckpt RUN_DIR --stats STATS.json --out BUNDLE \\
        [--dinov2-weights dinov2_vits14_pretrain.pth] [--epoch latest] [--env wall]

RUN_DIR is a DINO-WM output folder: RUN_DIR/hydra.yaml (the resolved training config DINO-WM writes)
and RUN_DIR/checkpoints/model_<epoch>.pth (DINO-WM pickles whole modules: predictor, action_encoder,
proprio_encoder, and encoder only when it was trained). The frozen DINOv2 encoder is not in the
checkpoint: DINO-WM loads it from torch hub, which cannot run here, so pass its state_dict file
(`--dinov2-weights`, e.g. dinov2_vits14_pretrain.pth downloaded where there is internet).
STATS.json holds the dataset normalization DINO-WM recomputes from the dataset at load time:
{"action_mean": [..], "action_std": [..], "proprio_mean": [..], "proprio_std": [..]} in environment
units (action values per env step, not frameskipped).

What the bundle holds (see models/README.md):
- encoder.onnx: DINOv2 at a fixed input size (image_size 224 -> 196 px, as DINO-WM resizes) with the
  bicubic position-embedding interpolation computed once and baked in as a constant (it does not
  export), patch tokens after the final norm; and the proprio encoder, its 10-d embedding tiled onto
  every token.
- predictor.onnx: DINO-WM's ViT predictor over num_hist frames of [visual | proprio | action] tokens
  (concat_dim 1), frame-causal mask, returning the next frame. DINO-WM's rollout keeps each token's
  predicted proprio channels, so the bundle carries them per token (manifest proprio_tokens =
  num_patches) and the objective reads token 0's, as DINO-WM's does.

Checks (the export fails, exit 1, when a tolerance is exceeded or a value is not finite), all between
ONNX Runtime on the exported graphs and the PyTorch reference (DINO-WM's own forward, with the live
interpolation), as max |onnx - torch| / max |torch|:
  encoder visual <= 1e-4, encoder proprio <= 1e-5, predictor next frame <= 1e-4,
  5-step rollout (DINO-WM's rollout vs qwm's: the last predicted frame) <= 1e-3.
`qwm verify --model BUNDLE` then checks qwm's own runtime against the same fixtures.
"""
import argparse
import json
import os
import pickle
import sys
import types

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dinowm_modules as dm  # noqa: E402
from bundle_io import export_bundle  # noqa: E402

TOL = {"encoder_visual": 1e-4, "encoder_proprio_emb": 1e-5, "predictor_next_visual": 1e-4,
       "predictor_next_proprio_emb": 1e-4, "rollout_next_visual": 1e-3, "rollout_next_proprio_emb": 1e-3}


class ExportError(Exception):
    """A problem with the user's input, reported as one line naming the file or key."""


# ------------------------------------------------------------------ loading a DINO-WM checkpoint

CLASS_MAP = {
    ("models.vit", "ViTPredictor"): dm.ViTPredictor,
    ("models.vit", "Transformer"): dm.Transformer,
    ("models.vit", "Attention"): dm.Attention,
    ("models.vit", "FeedForward"): dm.FeedForward,
    ("models.proprio", "ProprioceptiveEmbedding"): dm.ProprioceptiveEmbedding,
    ("models.dino", "DinoV2Encoder"): dm.DinoV2Encoder,
    ("dinov2.models.vision_transformer", "DinoVisionTransformer"): dm.DinoVisionTransformer,
    ("dinov2.layers.block", "NestedTensorBlock"): dm.Block,
    ("dinov2.layers.block", "Block"): dm.Block,
    ("dinov2.layers.attention", "MemEffAttention"): dm.DinoAttention,
    ("dinov2.layers.attention", "Attention"): dm.DinoAttention,
    ("dinov2.layers.mlp", "Mlp"): dm.Mlp,
    ("dinov2.layers.layer_scale", "LayerScale"): dm.LayerScale,
    ("dinov2.layers.patch_embed", "PatchEmbed"): dm.PatchEmbed,
}
SAFE_BUILTINS = {"set", "frozenset", "slice", "bytearray", "complex", "int", "float", "dict", "list", "tuple",
                 "object", "bool", "str", "bytes", "range"}
SAFE_PREFIXES = ("torch", "collections", "numpy", "_codecs", "copyreg", "functools", "enum", "math")


class Opaque:
    """Stands in for a class we do not need (the decoder, optimizers of unknown kinds, ...): it keeps
    the pickled state and never runs the checkpoint's code."""

    qwm_class = "?"

    def __init__(self, *args, **kwargs):
        self.args = args

    def __setstate__(self, state):
        self.__dict__["state"] = state

    def __call__(self, *args, **kwargs):
        return Opaque()


def opaque(module, name):
    return type(name, (Opaque,), {"qwm_class": f"{module}.{name}"})


class Unpickler(pickle.Unpickler):
    def find_class(self, module, name):
        # Protocol-2 pickles (torch.save's default) name Python 3 modules by their Python 2 names.
        module = {"__builtin__": "builtins", "copy_reg": "copyreg"}.get(module, module)
        if (module, name) in CLASS_MAP:
            return CLASS_MAP[(module, name)]
        if module == "builtins":
            if name in SAFE_BUILTINS:
                return super().find_class(module, name)
            raise pickle.UnpicklingError(f"refusing builtins.{name} in a checkpoint")
        if module.split(".")[0] in SAFE_PREFIXES:
            return super().find_class(module, name)
        return opaque(module, name)


checkpoint_pickle = types.ModuleType("qwm_checkpoint_pickle")
checkpoint_pickle.Unpickler = Unpickler
checkpoint_pickle.load = lambda f, **kw: Unpickler(f, **kw).load()
checkpoint_pickle.__name__ = "qwm_checkpoint_pickle"


def load_checkpoint(path):
    if not os.path.isfile(path):
        raise ExportError(f"{path}: checkpoint not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False, pickle_module=checkpoint_pickle)
    except Exception as e:  # noqa: BLE001 - any unpickling failure is the file's problem
        raise ExportError(f"{path}: cannot read the checkpoint: {e}") from e
    if not isinstance(payload, dict):
        raise ExportError(f"{path}: expected DINO-WM's dict of modules, found {type(payload).__name__}")
    return payload


def module_weights(payload, key, expect, path, required=True):
    """state_dict of checkpoint entry `key`, which must be a module of class `expect` (or a state_dict)."""
    v = payload.get(key)
    if v is None:
        if required:
            raise ExportError(f"{path}: no '{key}' in the checkpoint (keys: {sorted(payload)})")
        return None
    if isinstance(v, dict):
        return v
    if not isinstance(v, expect):
        got = getattr(v, "qwm_class", type(v).__name__)
        raise ExportError(f"{path}: checkpoint '{key}' is a {got}, not DINO-WM's {expect.__name__}")
    return v.state_dict()


def load_strict(module, sd, what):
    try:
        module.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        msg = " ".join(str(e).split())
        raise ExportError(f"{what}: weights do not match the config: {msg[:600]}") from e


def read_config(run_dir):
    path = os.path.join(run_dir, "hydra.yaml")
    if not os.path.isfile(path):
        raise ExportError(f"{path}: not found (a DINO-WM run folder holds hydra.yaml and checkpoints/)")
    import yaml
    with open(path) as f:
        try:
            cfg = yaml.safe_load(f)
        except yaml.YAMLError as e:
            raise ExportError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(cfg, dict):
        raise ExportError(f"{path}: expected a mapping")
    if "${" in json.dumps(cfg):
        raise ExportError(f"{path}: has unresolved interpolations (DINO-WM writes it resolved)")

    def get(key, types_=(int,), default=None):
        cur = cfg
        for part in key.split("."):
            if not isinstance(cur, dict) or part not in cur:
                if default is not None:
                    return default
                raise ExportError(f"{path}: missing config key '{key}'")
            cur = cur[part]
        if not isinstance(cur, types_) or isinstance(cur, bool) and bool not in types_:
            raise ExportError(f"{path}: config key '{key}' = {cur!r} has the wrong type")
        return cur

    c = {k: get(k) for k in ["img_size", "num_hist", "frameskip", "concat_dim", "action_emb_dim",
                             "proprio_emb_dim"]}
    c["num_action_repeat"] = get("num_action_repeat", default=1)
    c["num_proprio_repeat"] = get("num_proprio_repeat", default=1)
    enc_t = get("encoder._target_", (str,))
    if enc_t != "models.dino.DinoV2Encoder":
        raise ExportError(f"{path}: encoder._target_ '{enc_t}' is not supported (only models.dino.DinoV2Encoder)")
    c["encoder_name"] = get("encoder.name", (str,))
    if c["encoder_name"] not in dm.DINOV2_ARCHS:
        raise ExportError(f"{path}: encoder.name '{c['encoder_name']}' is not one of {sorted(dm.DINOV2_ARCHS)}")
    fk = get("encoder.feature_key", (str,))
    if fk != "x_norm_patchtokens":
        raise ExportError(f"{path}: encoder.feature_key '{fk}' is not supported (only x_norm_patchtokens)")
    pred_t = get("predictor._target_", (str,))
    if pred_t != "models.vit.ViTPredictor":
        raise ExportError(f"{path}: predictor._target_ '{pred_t}' is not supported (only models.vit.ViTPredictor)")
    c["depth"], c["heads"], c["mlp_dim"] = get("predictor.depth"), get("predictor.heads"), get("predictor.mlp_dim")
    c["dim_head"] = get("predictor.dim_head", default=64)
    if c["concat_dim"] != 1:
        raise ExportError(f"{path}: concat_dim {c['concat_dim']} is not supported (qwm bundles use DINO-WM's "
                          "default concat_dim 1: proprio and action tiled onto every patch token)")
    if c["num_proprio_repeat"] != 1:
        raise ExportError(f"{path}: num_proprio_repeat {c['num_proprio_repeat']} is not supported (only 1)")
    if c["img_size"] % 16 != 0 or c["num_hist"] < 1 or c["frameskip"] < 1:
        raise ExportError(f"{path}: img_size {c['img_size']} (must be a multiple of 16), num_hist "
                          f"{c['num_hist']}, frameskip {c['frameskip']} are not usable")
    c["env"] = get("env.name", (str,), default="") if isinstance(cfg.get("env"), dict) else ""
    return c


# ------------------------------------------------------------------ the graphs qwm runs


def attention_einsum(x, qkv_w, qkv_b, proj, heads, mask=None):
    """Multi-head attention with heads as an Einsum axis (what tract runs fastest; same function as
    the reshape/permute form, checked by the parity tests)."""
    b, n, _ = x.shape
    qkv = F.linear(x, qkv_w, qkv_b)
    inner = qkv.shape[-1] // 3
    dh = inner // heads
    q = qkv[..., :inner].reshape(b, n, heads, dh)
    k = qkv[..., inner:2 * inner].reshape(b, n, heads, dh)
    v = qkv[..., 2 * inner:].reshape(b, n, heads, dh)
    att = torch.einsum("bnhd,bmhd->bhnm", q, k) * (dh ** -0.5)
    if mask is not None:
        att = att.masked_fill(~mask, float("-inf"))
    out = torch.einsum("bhnm,bmhd->bnhd", att.softmax(-1), v).reshape(b, n, inner)
    return proj(out)


def kernel1(x, conv):
    """A kernel-1 Conv1d applied per step ([.., C] -> [.., E]) as Einsum + Add (explicit subscripts:
    tract 0.23 mis-shapes an ellipsis Einsum). Einsum keeps these tiny layers out of the quantizer,
    which quantizes MatMul/Gemm weights."""
    sub = "bhc,ec->bhe" if x.dim() == 3 else "bc,ec->be"
    return torch.einsum(sub, x, conv.weight[:, :, 0]) + conv.bias


class ExportEncoder(nn.Module):
    """pixels [B,3,S,S] (normalized, S = encoder input size), proprio [B,P] (normalized) ->
    visual [B,N,D], proprio_emb [B, N*E] (the embedding tiled onto every token)."""

    def __init__(self, vit, proprio_encoder, size):
        super().__init__()
        self.vit, self.proprio_encoder = vit, proprio_encoder
        with torch.no_grad():
            n = (size // vit.patch_size) ** 2
            pos = vit.interpolate_pos_encoding(torch.zeros(1, n + 1, vit.embed_dim), size, size)
        self.register_buffer("pos", pos.detach().clone())
        self.n = n

    def forward(self, pixels, proprio):
        v = self.vit
        x = v.patch_embed.proj(pixels).flatten(2).transpose(1, 2)
        x = torch.cat([v.cls_token.expand(x.shape[0], -1, -1), x], 1) + self.pos
        for blk in v.blocks:
            a = attention_einsum(blk.norm1(x), blk.attn.qkv.weight, blk.attn.qkv.bias, blk.attn.proj,
                                 blk.attn.num_heads)
            x = x + a * blk.ls1.gamma
            m = blk.mlp.fc2(F.gelu(blk.mlp.fc1(blk.norm2(x))))
            x = x + m * blk.ls2.gamma
        visual = v.norm(x)[:, 1:]
        pe = kernel1(proprio, self.proprio_encoder.patch_embed)
        return visual, pe.repeat(1, self.n)


class ExportPredictor(nn.Module):
    """visual [B,H,N,D], proprio_emb [B,H,N*E], action [B,H,A] -> the frame after the last:
    next_visual [B,N,D], next_proprio_emb [B,N*E]."""

    def __init__(self, predictor, action_encoder, *, num_hist, num_patches, visual_dim, proprio_emb_dim,
                 num_action_repeat, heads):
        super().__init__()
        self.predictor, self.action_encoder = predictor, action_encoder
        self.h, self.n, self.d, self.e = num_hist, num_patches, visual_dim, proprio_emb_dim
        self.ra, self.heads = num_action_repeat, heads
        frame = torch.arange(num_hist).repeat_interleave(num_patches)
        self.register_buffer("mask", frame[None, :] <= frame[:, None], persistent=False)

    def forward(self, visual, proprio_emb, action):
        # Shapes from constants (only the batch is dynamic): tract's shape analysis then has no
        # Shape/Gather arithmetic to fold.
        h, n, d, e = self.h, self.n, self.d, self.e
        p = proprio_emb.reshape(-1, h, n, e)
        a = kernel1(action, self.action_encoder.patch_embed)
        a = a[:, :, None, :].repeat(1, 1, n, self.ra)
        x = torch.cat([visual, p, a], -1).reshape(-1, h * n, d + e + a.shape[-1])
        x = x + self.predictor.pos_embedding[:, :h * n]
        tr = self.predictor.transformer
        for attn, ff in tr.layers:
            x = x + attention_einsum(attn.norm(x), attn.to_qkv.weight, None, attn.to_out, self.heads, self.mask)
            x = x + ff(x)
        last = tr.norm(x)[:, (h - 1) * n:]
        return last[..., :d], last[..., d:d + e].reshape(-1, n * e)


# ------------------------------------------------------------------ building, checking, writing


def build(run_dir, dinov2_weights, epoch):
    cfg = read_config(run_dir)
    ckpt_path = os.path.join(run_dir, "checkpoints", f"model_{epoch}.pth")
    payload = load_checkpoint(ckpt_path)
    pred_sd = module_weights(payload, "predictor", dm.ViTPredictor, ckpt_path)
    act_sd = module_weights(payload, "action_encoder", dm.ProprioceptiveEmbedding, ckpt_path)
    prop_sd = module_weights(payload, "proprio_encoder", dm.ProprioceptiveEmbedding, ckpt_path)
    enc_sd = module_weights(payload, "encoder", dm.DinoV2Encoder, ckpt_path, required=False)
    encoder = dm.DinoV2Encoder(cfg["encoder_name"], "x_norm_patchtokens")
    if enc_sd is not None:
        load_strict(encoder, enc_sd, f"{ckpt_path} 'encoder'")
        enc_src = "checkpoint"
    else:
        if not dinov2_weights:
            raise ExportError(f"{ckpt_path}: the frozen encoder is not in the checkpoint (DINO-WM loads it "
                              f"from torch hub): pass --dinov2-weights with {cfg['encoder_name']}'s state_dict file")
        if not os.path.isfile(dinov2_weights):
            raise ExportError(f"{dinov2_weights}: --dinov2-weights file not found")
        sd = torch.load(dinov2_weights, map_location="cpu", weights_only=True)
        load_strict(encoder.base_model, sd, f"{dinov2_weights}")
        enc_src = os.path.basename(dinov2_weights)
    for key, sd in [("action_encoder", act_sd), ("proprio_encoder", prop_sd)]:
        w = sd.get("patch_embed.weight")
        if w is None or w.dim() != 3 or w.shape[2] != 1:
            raise ExportError(f"{ckpt_path}: '{key}' has no kernel-1 patch_embed.weight")
    E = cfg["proprio_emb_dim"]
    if prop_sd["patch_embed.weight"].shape[0] != E or act_sd["patch_embed.weight"].shape[0] != cfg["action_emb_dim"]:
        raise ExportError(f"{ckpt_path}: encoder widths {prop_sd['patch_embed.weight'].shape[0]} / "
                          f"{act_sd['patch_embed.weight'].shape[0]} disagree with proprio_emb_dim {E} / "
                          f"action_emb_dim {cfg['action_emb_dim']}")
    proprio_dim = prop_sd["patch_embed.weight"].shape[1]
    model_action = act_sd["patch_embed.weight"].shape[1]
    if model_action % cfg["frameskip"]:
        raise ExportError(f"{ckpt_path}: action encoder input {model_action} is not a multiple of frameskip "
                          f"{cfg['frameskip']}")
    pe = dm.ProprioceptiveEmbedding(1, 1, proprio_dim, E)
    ae = dm.ProprioceptiveEmbedding(1, 1, model_action, cfg["action_emb_dim"])
    load_strict(pe, prop_sd, f"{ckpt_path} 'proprio_encoder'")
    load_strict(ae, act_sd, f"{ckpt_path} 'action_encoder'")
    side = cfg["img_size"] // 16
    size = side * encoder.patch_size
    n = side * side
    D = encoder.emb_dim
    dim = D + E * cfg["num_proprio_repeat"] + cfg["action_emb_dim"] * cfg["num_action_repeat"]
    pred = dm.ViTPredictor(num_patches=n, num_frames=cfg["num_hist"], dim=dim, depth=cfg["depth"],
                           heads=cfg["heads"], mlp_dim=cfg["mlp_dim"], dim_head=cfg["dim_head"])
    load_strict(pred, pred_sd, f"{ckpt_path} 'predictor'")
    for m in (encoder, pe, ae, pred):
        m.eval()
    ref = dm.ReferenceWM(encoder, pe, ae, pred, num_hist=cfg["num_hist"], proprio_emb_dim=E,
                         action_emb_dim=cfg["action_emb_dim"], num_action_repeat=cfg["num_action_repeat"])
    info = dict(cfg, size=size, num_patches=n, visual_dim=D, proprio_dim=proprio_dim,
                action_dim=model_action // cfg["frameskip"], epoch=payload.get("epoch"), encoder_weights=enc_src)
    return ref, info


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if not np.isfinite(a).all():
        return float("inf")
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-6))


def qwm_rollout(sess, hist_v, hist_p, past_a, actions, H):
    """qwm's rollout (src/model.rs) with onnxruntime: a window of the last H frames, each frame's
    tokens carrying the action applied at it, predictions fed back with their per-token proprio."""
    B, T = actions.shape[:2]
    frames_v = [np.broadcast_to(v, (B,) + v.shape) for v in hist_v]
    frames_p = [np.broadcast_to(p, (B,) + p.shape) for p in hist_p]
    acts = [np.broadcast_to(a, (B,) + a.shape) for a in past_a]
    for k in range(T):
        acts_k = acts + [actions[:, j] for j in range(k + 1)]
        v = np.stack(frames_v[-H:], 1).astype(np.float32)
        p = np.stack(frames_p[-H:], 1).astype(np.float32)
        a = np.stack(acts_k[-H:], 1).astype(np.float32)
        nv, npe = sess.run(None, {"visual": v, "proprio_emb": p, "action": a})
        frames_v.append(nv)
        frames_p.append(npe)
    return frames_v[-1], frames_p[-1]


def export(args):
    torch.manual_seed(args.seed)
    ref, info = build(args.ckpt, args.dinov2_weights, args.epoch)
    stats = read_stats(args.stats, info)
    S, N, D, H, E = info["size"], info["num_patches"], info["visual_dim"], info["num_hist"], info["proprio_emb_dim"]
    A, P = info["action_dim"] * info["frameskip"], info["proprio_dim"]
    enc = ExportEncoder(ref.encoder.base_model, ref.proprio_encoder, S).eval()
    pred = ExportPredictor(ref.predictor, ref.action_encoder, num_hist=H, num_patches=N, visual_dim=D,
                           proprio_emb_dim=E, num_action_repeat=info["num_action_repeat"],
                           heads=info["heads"]).eval()
    g = torch.Generator().manual_seed(args.seed)
    B = 2
    # Smooth random images in [-1, 1] (normalized pixels) and normalized proprio / actions.
    pix = F.interpolate(torch.rand(B + H, 3, 8, 8, generator=g) * 2 - 1, size=(S, S), mode="bilinear",
                        align_corners=False)
    prop = torch.randn(B + H, P, generator=g)
    act = torch.randn(B, H, A, generator=g)
    T = 5
    roll_act = torch.randn(B, T, A, generator=g)
    past_act = torch.randn(H - 1, A, generator=g)
    with torch.no_grad():
        # References from DINO-WM's own forward (live position-embedding interpolation).
        ref_vis, ref_prop = ref.encode_obs(pix[:, None], prop[:, None])
        enc_fix = {"visual": ref_vis[:B, 0], "proprio_emb": ref_prop[:B, 0].repeat(1, N)}
        # Predictor reference: H frames from the first B+H-1 images, each candidate its own window.
        vis_h = torch.stack([pix[i:i + H] for i in range(B)])
        prop_h = torch.stack([prop[i:i + H] for i in range(B)])
        z = ref.encode(vis_h, prop_h, act)
        out = ref.predict(z)[:, -1]
        pred_in_v, pred_in_p = z[..., :D], z[..., D:D + E].reshape(B, H, N * E)
        pred_ref = (out[..., :D], out[..., D:D + E].reshape(B, N * E))
        # Rollout reference: one observed history (the last H images), B candidates of T actions.
        hv, hp = pix[B:B + H][None].expand(B, -1, -1, -1, -1), prop[B:B + H][None].expand(B, -1, -1)
        full_act = torch.cat([past_act[None].expand(B, -1, -1), roll_act], 1)
        zr = ref.rollout(hv, hp, full_act)
        roll_ref = (zr[:, -1, :, :D], zr[:, -1, :, D:D + E].reshape(B, N * E))
        zh = ref.encode(hv[:1], hp[:1], torch.cat([past_act, roll_act[0, :1]], 0)[None])[0]
        hist_v, hist_p = zh[..., :D], zh[..., D:D + E].reshape(H, N * E)
    extra = {"rollout_visual": hist_v, "rollout_proprio_emb": hist_p, "rollout_past_action": past_act,
             "rollout_action": roll_act, "rollout_next_visual": roll_ref[0], "rollout_next_proprio_emb": roll_ref[1]}
    name = args.name or os.path.basename(os.path.normpath(args.out))
    training = {"source": "DINO-WM checkpoint", "run_dir": os.path.normpath(args.ckpt), "epoch": info["epoch"],
                "encoder": f"{info['encoder_name']} ({info['encoder_weights']})",
                "config": {k: info[k] for k in ["img_size", "num_hist", "frameskip", "concat_dim", "action_emb_dim",
                                               "proprio_emb_dim", "num_action_repeat", "depth", "heads",
                                               "mlp_dim", "dim_head"]}}
    export_bundle(enc, pred, args.out, name=name, env=args.env or info["env"] or "wall", image_size=S, num_patches=N,
                  visual_dim=D, num_hist=H, frameskip=info["frameskip"], action_dim=info["action_dim"],
                  proprio_dim=P, proprio_emb_dim=E, proprio_tokens=N, training=training,
                  fixture_inputs={"pixels": pix[:B], "proprio": prop[:B], "action": act},
                  extra_fixtures=extra, alpha=args.alpha, **stats)
    # The fixtures export_bundle wrote came from the export modules; overwrite them with DINO-WM's
    # own forward, the reference every check (here and `qwm verify`) compares with.
    fx = os.path.join(args.out, "fixtures")
    for k, v in {"encoder_visual": enc_fix["visual"], "encoder_proprio_emb": enc_fix["proprio_emb"],
                 "predictor_visual": pred_in_v, "predictor_proprio_emb": pred_in_p, "predictor_action": act,
                 "predictor_next_visual": pred_ref[0], "predictor_next_proprio_emb": pred_ref[1]}.items():
        np.save(os.path.join(fx, k + ".npy"), v.contiguous().numpy().astype(np.float32))
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = args.threads
    es = ort.InferenceSession(os.path.join(args.out, "encoder.onnx"), so)
    ps = ort.InferenceSession(os.path.join(args.out, "predictor.onnx"), so)
    ev, ep = es.run(None, {"pixels": pix[:B].numpy(), "proprio": prop[:B].numpy()})
    nv, npe = ps.run(None, {"visual": pred_in_v.contiguous().numpy(), "proprio_emb": pred_in_p.contiguous().numpy(),
                            "action": act.numpy()})
    rv, rp = qwm_rollout(ps, hist_v.numpy(), hist_p.numpy(), past_act.numpy(), roll_act.numpy(), H)
    errs = {"encoder_visual": rel(ev, enc_fix["visual"]), "encoder_proprio_emb": rel(ep, enc_fix["proprio_emb"]),
            "predictor_next_visual": rel(nv, pred_ref[0]), "predictor_next_proprio_emb": rel(npe, pred_ref[1]),
            "rollout_next_visual": rel(rv, roll_ref[0]), "rollout_next_proprio_emb": rel(rp, roll_ref[1])}
    with open(os.path.join(args.out, "manifest.json")) as f:
        manifest = json.load(f)
    manifest["training"]["parity_onnxruntime_vs_torch"] = {k: {"rel_err": v, "tol": TOL[k]} for k, v in errs.items()}
    with open(os.path.join(args.out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=2)
    bad = {k: v for k, v in errs.items() if not v <= TOL[k]}
    for k, v in errs.items():
        print(f"  {k:28s} rel err {v:.2e} (tol {TOL[k]:.0e}){'  FAIL' if k in bad else ''}")
    if bad:
        raise ExportError(f"{args.out}: ONNX and PyTorch disagree beyond tolerance: {sorted(bad)}")
    print(f"wrote {args.out}: {N} tokens x {D}, num_hist {H}, image {S} px; check it with "
          f"`qwm verify --model {args.out}`")


def read_stats(path, info):
    if not path:
        raise ExportError("--stats is required: DINO-WM recomputes action/proprio normalization from its "
                          "dataset, it is not in the checkpoint")
    try:
        with open(path) as f:
            s = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ExportError(f"{path}: cannot read the --stats file: {e}") from e
    out = {}
    for key, n in [("action_mean", info["action_dim"]), ("action_std", info["action_dim"]),
                   ("proprio_mean", info["proprio_dim"]), ("proprio_std", info["proprio_dim"])]:
        v = s.get(key)
        if not isinstance(v, list) or len(v) != n or not all(isinstance(x, (int, float)) for x in v):
            raise ExportError(f"{path}: '{key}' must be a list of {n} numbers (the checkpoint's dimension)")
        if key.endswith("std") and min(v) <= 0:
            raise ExportError(f"{path}: '{key}' must be positive")
        out[key] = v
    for key in ("action_low", "action_high"):
        if key in s:
            out[key] = s[key]
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ckpt", required=True, help="DINO-WM run folder (hydra.yaml, checkpoints/)")
    ap.add_argument("--out", required=True, help="bundle folder to write")
    ap.add_argument("--stats", help="dataset normalization JSON (action_mean/std, proprio_mean/std)")
    ap.add_argument("--dinov2-weights", help="state_dict of the frozen DINOv2 (when not in the checkpoint)")
    ap.add_argument("--epoch", default="latest", help="checkpoint model_<epoch>.pth (default latest)")
    ap.add_argument("--env", help="qwm environment name (default: the config's env.name)")
    ap.add_argument("--name", help="bundle name (default: the output folder's name)")
    ap.add_argument("--alpha", type=float, default=1.0, help="objective proprio weight (DINO-WM: 1 Wall/PushT, 0 PointMaze)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the fixture inputs")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        export(args)
    except ExportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
