"""DINO-WM's and DINOv2's modules, re-written with the same structure, attribute names and forward
semantics (our own code; facts from the public sources: gaoyuezhou/dino_wm models/{vit,proprio,dino,
visual_world_model}.py and facebookresearch/dinov2 models/vision_transformer.py, layers/*).

Two uses:
- unpickling a DINO-WM checkpoint (DINO-WM saves whole modules, so `torch.load` needs classes with
  these names: `CLASS_MAP` maps DINO-WM's and DINOv2's class paths onto the classes here);
- the PyTorch reference the exporter checks its ONNX graphs against (`ReferenceWM` follows
  VWorldModel's encode / predict / separate_emb / rollout line by line).

Parameter names match DINO-WM's state_dicts exactly, e.g. `transformer.layers.0.0.to_qkv.weight`
(predictor) and `blocks.0.attn.qkv.weight`, `blocks.0.ls1.gamma` (DINOv2), so a checkpoint's
weights load with `load_state_dict(strict=True)`.
"""
import math
from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F

# ---------------------------------------------------------------- DINOv2 (dinov2/layers, models)


class PatchEmbed(nn.Module):
    def __init__(self, img_size=518, patch_size=14, in_chans=3, embed_dim=384):
        super().__init__()
        self.img_size = (img_size, img_size)
        self.patch_size = (patch_size, patch_size)
        self.patches_resolution = (img_size // patch_size, img_size // patch_size)
        self.num_patches = self.patches_resolution[0] * self.patches_resolution[1]
        self.in_chans, self.embed_dim, self.flatten_embedding = in_chans, embed_dim, True
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.Identity()

    def forward(self, x):
        _, _, h, w = x.shape
        ph, pw = self.patch_size
        assert h % ph == 0 and w % pw == 0, f"input {h}x{w} is not a multiple of the patch size {ph}"
        x = self.proj(x).flatten(2).transpose(1, 2)
        return self.norm(x)


class LayerScale(nn.Module):
    def __init__(self, dim, init_values=1e-5, inplace=False):
        super().__init__()
        self.inplace = inplace
        self.gamma = nn.Parameter(init_values * torch.ones(dim))

    def forward(self, x):
        return x.mul_(self.gamma) if self.inplace else x * self.gamma


class Mlp(nn.Module):
    def __init__(self, in_features, hidden_features, bias=True):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features, bias=bias)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, in_features, bias=bias)
        self.drop = nn.Dropout(0.0)

    def forward(self, x):
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class DinoAttention(nn.Module):
    """dinov2.layers.attention.Attention / MemEffAttention (without xformers they are the same)."""

    def __init__(self, dim, num_heads=8, qkv_bias=True, proj_bias=True):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(0.0)
        self.proj = nn.Linear(dim, dim, bias=proj_bias)
        self.proj_drop = nn.Dropout(0.0)

    def forward(self, x, attn_bias=None):
        assert attn_bias is None, "attention bias (nested tensors) is not supported"
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0] * self.scale, qkv[1], qkv[2]
        attn = (q @ k.transpose(-2, -1)).softmax(dim=-1)
        x = (self.attn_drop(attn) @ v).transpose(1, 2).reshape(B, N, C)
        return self.proj_drop(self.proj(x))


class Block(nn.Module):
    """dinov2.layers.block.Block / NestedTensorBlock (inference path)."""

    def __init__(self, dim, num_heads, mlp_ratio=4.0, init_values=1.0):
        super().__init__()
        norm = partial(nn.LayerNorm, eps=1e-6)
        self.norm1 = norm(dim)
        self.attn = DinoAttention(dim, num_heads)
        self.ls1 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.drop_path1 = nn.Identity()
        self.norm2 = norm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.ls2 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.drop_path2 = nn.Identity()
        self.sample_drop_ratio = 0.0

    def forward(self, x):
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


# hub name -> (embed_dim, depth, num_heads)
DINOV2_ARCHS = {
    "dinov2_vits14": (384, 12, 6),
    "dinov2_vitb14": (768, 12, 12),
    "dinov2_vitl14": (1024, 24, 16),
    # Not a DINOv2 model: a miniature with the same structure for qwm's own tests (tests/data).
    "qwm_test_tiny14": (48, 2, 3),
}


class DinoVisionTransformer(nn.Module):
    """dinov2.models.vision_transformer.DinoVisionTransformer as the hub builds it
    (img_size 518, patch 14, init_values 1.0, no registers, block_chunks 0,
    interpolate_antialias False, interpolate_offset 0.1)."""

    def __init__(self, img_size=518, patch_size=14, embed_dim=384, depth=12, num_heads=6, mlp_ratio=4.0,
                 init_values=1.0, interpolate_antialias=False, interpolate_offset=0.1):
        super().__init__()
        self.num_features = self.embed_dim = embed_dim
        self.num_tokens = 1
        self.n_blocks = depth
        self.num_heads = num_heads
        self.patch_size = patch_size
        self.num_register_tokens = 0
        self.interpolate_antialias = interpolate_antialias
        self.interpolate_offset = interpolate_offset
        self.patch_embed = PatchEmbed(img_size, patch_size, 3, embed_dim)
        num_patches = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + self.num_tokens, embed_dim))
        self.register_tokens = None
        self.chunked_blocks = False
        self.blocks = nn.ModuleList([Block(embed_dim, num_heads, mlp_ratio, init_values) for _ in range(depth)])
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head = nn.Identity()
        self.mask_token = nn.Parameter(torch.zeros(1, embed_dim))

    def interpolate_pos_encoding(self, x, w, h):
        previous_dtype = x.dtype
        npatch = x.shape[1] - 1
        N = self.pos_embed.shape[1] - 1
        if npatch == N and w == h:
            return self.pos_embed
        pos_embed = self.pos_embed.float()
        class_pos_embed = pos_embed[:, 0]
        patch_pos_embed = pos_embed[:, 1:]
        dim = x.shape[-1]
        w0 = w // self.patch_size
        h0 = h // self.patch_size
        M = int(math.sqrt(N))
        assert N == M * M
        kwargs = {}
        if self.interpolate_offset:
            sx = float(w0 + self.interpolate_offset) / M
            sy = float(h0 + self.interpolate_offset) / M
            kwargs["scale_factor"] = (sx, sy)
        else:
            kwargs["size"] = (w0, h0)
        patch_pos_embed = F.interpolate(patch_pos_embed.reshape(1, M, M, dim).permute(0, 3, 1, 2),
                                        mode="bicubic", antialias=self.interpolate_antialias, **kwargs)
        assert (w0, h0) == patch_pos_embed.shape[-2:]
        patch_pos_embed = patch_pos_embed.permute(0, 2, 3, 1).view(1, -1, dim)
        return torch.cat((class_pos_embed.unsqueeze(0), patch_pos_embed), dim=1).to(previous_dtype)

    def prepare_tokens_with_masks(self, x, masks=None):
        B, nc, w, h = x.shape
        x = self.patch_embed(x)
        if masks is not None:
            x = torch.where(masks.unsqueeze(-1), self.mask_token.to(x.dtype).unsqueeze(0), x)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        return x + self.interpolate_pos_encoding(x, w, h)

    def forward_features(self, x, masks=None):
        x = self.prepare_tokens_with_masks(x, masks)
        for blk in self.blocks:
            x = blk(x)
        x_norm = self.norm(x)
        return {"x_norm_clstoken": x_norm[:, 0], "x_norm_regtokens": x_norm[:, 1:1],
                "x_norm_patchtokens": x_norm[:, 1:], "x_prenorm": x, "masks": masks}


def dinov2(name):
    if name not in DINOV2_ARCHS:
        raise ValueError(f"encoder.name '{name}' is not one of {sorted(DINOV2_ARCHS)}")
    d, depth, heads = DINOV2_ARCHS[name]
    return DinoVisionTransformer(embed_dim=d, depth=depth, num_heads=heads)


# ---------------------------------------------------------------- DINO-WM (models/)


class DinoV2Encoder(nn.Module):
    """models.dino.DinoV2Encoder; `base_model` is passed in (DINO-WM loads it from torch hub)."""

    def __init__(self, name, feature_key, base_model=None):
        super().__init__()
        self.name = name
        self.base_model = base_model if base_model is not None else dinov2(name)
        self.feature_key = feature_key
        self.emb_dim = self.base_model.num_features
        if feature_key == "x_norm_patchtokens":
            self.latent_ndim = 2
        elif feature_key == "x_norm_clstoken":
            self.latent_ndim = 1
        else:
            raise ValueError(f"Invalid feature key: {feature_key}")
        self.patch_size = self.base_model.patch_size

    def forward(self, x):
        emb = self.base_model.forward_features(x)[self.feature_key]
        if self.latent_ndim == 1:
            emb = emb.unsqueeze(1)
        return emb


class ProprioceptiveEmbedding(nn.Module):
    """models.proprio.ProprioceptiveEmbedding: a kernel-1 Conv1d over [B, T, D]."""

    def __init__(self, num_frames=16, tubelet_size=1, in_chans=8, emb_dim=384, use_3d_pos=False):
        super().__init__()
        self.num_frames, self.tubelet_size, self.in_chans, self.emb_dim = num_frames, tubelet_size, in_chans, emb_dim
        self.patch_embed = nn.Conv1d(in_chans, emb_dim, kernel_size=tubelet_size, stride=tubelet_size)

    def forward(self, x):
        return self.patch_embed(x.permute(0, 2, 1)).permute(0, 2, 1)


def generate_mask_matrix(npatch, nwindow):
    zeros = torch.zeros(npatch, npatch)
    ones = torch.ones(npatch, npatch)
    rows = [torch.cat([ones] * (i + 1) + [zeros] * (nwindow - i - 1), dim=1) for i in range(nwindow)]
    return torch.cat(rows, dim=0).unsqueeze(0).unsqueeze(0)


class FeedForward(nn.Module):
    def __init__(self, dim, hidden_dim, dropout=0.0):
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, hidden_dim), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(hidden_dim, dim), nn.Dropout(dropout))

    def forward(self, x):
        return self.net(x)


class Attention(nn.Module):
    """models.vit.Attention: pre-LayerNorm, qkv without bias, frame-causal mask in `self.bias`
    (a plain tensor attribute, not a buffer: it is pickled with the module, not in state_dict)."""

    def __init__(self, dim, heads=8, dim_head=64, dropout=0.0, num_patches=1, num_frames=1):
        super().__init__()
        inner_dim = dim_head * heads
        project_out = not (heads == 1 and dim_head == dim)
        self.heads = heads
        self.scale = dim_head ** -0.5
        self.norm = nn.LayerNorm(dim)
        self.attend = nn.Softmax(dim=-1)
        self.dropout = nn.Dropout(dropout)
        self.to_qkv = nn.Linear(dim, inner_dim * 3, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner_dim, dim), nn.Dropout(dropout)) if project_out else nn.Identity()
        self.bias = generate_mask_matrix(num_patches, num_frames)

    def forward(self, x):
        B, T, C = x.size()
        x = self.norm(x)
        q, k, v = (t.reshape(B, T, self.heads, -1).transpose(1, 2) for t in self.to_qkv(x).chunk(3, dim=-1))
        dots = torch.matmul(q, k.transpose(-1, -2)) * self.scale
        dots = dots.masked_fill(self.bias[:, :, :T, :T].to(dots.device) == 0, float("-inf"))
        out = torch.matmul(self.dropout(self.attend(dots)), v)
        return self.to_out(out.transpose(1, 2).reshape(B, T, -1))


class Transformer(nn.Module):
    def __init__(self, dim, depth, heads, dim_head, mlp_dim, dropout=0.0, num_patches=1, num_frames=1):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.layers = nn.ModuleList([
            nn.ModuleList([Attention(dim, heads, dim_head, dropout, num_patches, num_frames),
                           FeedForward(dim, mlp_dim, dropout)]) for _ in range(depth)])

    def forward(self, x):
        for attn, ff in self.layers:
            x = attn(x) + x
            x = ff(x) + x
        return self.norm(x)


class ViTPredictor(nn.Module):
    def __init__(self, *, num_patches, num_frames, dim, depth, heads, mlp_dim, pool="cls", dim_head=64,
                 dropout=0.0, emb_dropout=0.0):
        super().__init__()
        self.pos_embedding = nn.Parameter(torch.randn(1, num_frames * num_patches, dim))
        self.dropout = nn.Dropout(emb_dropout)
        self.transformer = Transformer(dim, depth, heads, dim_head, mlp_dim, dropout, num_patches, num_frames)
        self.pool = pool

    def forward(self, x):
        b, n, _ = x.shape
        x = x + self.pos_embedding[:, :n]
        return self.transformer(self.dropout(x))


class ReferenceWM:
    """VWorldModel's inference path (concat_dim 1), used as the PyTorch reference."""

    def __init__(self, encoder, proprio_encoder, action_encoder, predictor, *, num_hist, proprio_emb_dim,
                 action_emb_dim, num_action_repeat=1, num_proprio_repeat=1):
        self.encoder, self.proprio_encoder = encoder, proprio_encoder
        self.action_encoder, self.predictor = action_encoder, predictor
        self.num_hist = num_hist
        self.num_action_repeat, self.num_proprio_repeat = num_action_repeat, num_proprio_repeat
        self.proprio_dim = proprio_emb_dim * num_proprio_repeat
        self.action_dim = action_emb_dim * num_action_repeat

    def encode_obs(self, visual, proprio):
        """visual [b, t, 3, S, S] already normalized and resized to the encoder's size."""
        b = visual.shape[0]
        emb = self.encoder(visual.flatten(0, 1))
        return emb.reshape(b, -1, *emb.shape[1:]), self.proprio_encoder(proprio)

    def encode(self, visual, proprio, act):
        z_vis, z_prop = self.encode_obs(visual, proprio)
        act_emb = self.action_encoder(act)
        f = z_vis.shape[2]
        prop = z_prop.unsqueeze(2).expand(-1, -1, f, -1).repeat(1, 1, 1, self.num_proprio_repeat)
        acts = act_emb.unsqueeze(2).expand(-1, -1, f, -1).repeat(1, 1, 1, self.num_action_repeat)
        return torch.cat([z_vis, prop, acts], dim=3)

    def predict(self, z):
        T = z.shape[1]
        out = self.predictor(z.flatten(1, 2))
        return out.reshape(out.shape[0], T, -1, out.shape[-1])

    def replace_actions_from_z(self, z, act):
        act_emb = self.action_encoder(act)
        f = z.shape[2]
        z = z.clone()
        z[..., -self.action_dim:] = act_emb.unsqueeze(2).expand(-1, -1, f, -1).repeat(1, 1, 1, self.num_action_repeat)
        return z

    def separate_emb(self, z):
        pd, ad = self.proprio_dim, self.action_dim
        z_visual, z_proprio = z[..., :-(pd + ad)], z[..., -(pd + ad):-ad]
        return z_visual, z_proprio[:, :, 0, : pd // self.num_proprio_repeat]

    def rollout(self, visual, proprio, act):
        """DINO-WM's rollout: returns all frames' tokens z [b, t + horizon, f, d]."""
        n0 = visual.shape[1]
        z = self.encode(visual, proprio, act[:, :n0])
        action = act[:, n0:]
        for t in range(action.shape[1]):
            z_new = self.predict(z[:, -self.num_hist:])[:, -1:]
            z = torch.cat([z, self.replace_actions_from_z(z_new, action[:, t:t + 1])], dim=1)
        z_new = self.predict(z[:, -self.num_hist:])[:, -1:]
        return torch.cat([z, z_new], dim=1)
