"""DINO-WM-style world model at a configurable scale (PyTorch).

Encoder: a ViT giving patch tokens after a final LayerNorm (no CLS), standing in for frozen DINOv2.
Proprio encoder and action encoder: kernel-1 Conv1d (a per-step Linear) to 10 dims each.
Predictor: ViT over num_hist frames of tokens [visual | proprio emb | action emb] (DINO-WM's
concat_dim=1), learned position embedding, frame-level block-causal mask, final LayerNorm.

Exported graphs (see export in train_wm.py):
  encoder.onnx   pixels [B,3,S,S] (normalized), proprio [B,P] (normalized) -> visual [B,N,D], proprio_emb [B,10]
  predictor.onnx visual [B,H,N,D], proprio_emb [B,H,10], action [B,H,A*frameskip] (normalized)
                 -> next_visual [B,N,D], next_proprio_emb [B,10]   (prediction for the frame after the last)
"""
import math
import torch
import torch.nn as nn
import torch.nn.functional as F


class Attention(nn.Module):
    def __init__(self, dim, heads, dim_head):
        super().__init__()
        inner = heads * dim_head
        self.heads, self.dim_head = heads, dim_head
        self.qkv = nn.Linear(dim, inner * 3)
        self.proj = nn.Linear(inner, dim)

    def forward(self, x, mask=None):
        # Heads stay an axis of Einsum instead of permuted tensors: the same function as the
        # usual reshape/permute formulation (bit-identical in PyTorch), but tract runs it without
        # MoveAxis/Gather nodes (measured ~15-30% faster per predictor call).
        b, n, _ = x.shape
        inner = self.heads * self.dim_head
        qkv = self.qkv(x)
        q = qkv[..., :inner].reshape(b, n, self.heads, self.dim_head)
        k = qkv[..., inner:2 * inner].reshape(b, n, self.heads, self.dim_head)
        v = qkv[..., 2 * inner:].reshape(b, n, self.heads, self.dim_head)
        att = torch.einsum("bnhd,bmhd->bhnm", q, k) * (1.0 / math.sqrt(self.dim_head))
        if mask is not None:
            att = att.masked_fill(~mask, float("-inf"))
        att = att.softmax(dim=-1)
        out = torch.einsum("bhnm,bmhd->bnhd", att, v).reshape(b, n, inner)
        return self.proj(out)


class Block(nn.Module):
    def __init__(self, dim, heads, dim_head, mlp_dim, layer_scale=None):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads, dim_head)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.fc1 = nn.Linear(dim, mlp_dim)
        self.fc2 = nn.Linear(mlp_dim, dim)
        if layer_scale is not None:
            self.ls1 = nn.Parameter(torch.full((dim,), layer_scale))
            self.ls2 = nn.Parameter(torch.full((dim,), layer_scale))
        else:
            self.ls1 = self.ls2 = None

    def forward(self, x, mask=None):
        a = self.attn(self.norm1(x), mask)
        x = x + (a * self.ls1 if self.ls1 is not None else a)
        m = self.fc2(F.gelu(self.fc1(self.norm2(x))))
        return x + (m * self.ls2 if self.ls2 is not None else m)


class ViTEncoder(nn.Module):
    """Patch-token ViT (DINOv2-like: layer scale, final LayerNorm, no CLS in the output)."""

    def __init__(self, image_size=64, patch=16, dim=64, depth=4, heads=4, mlp_ratio=4):
        super().__init__()
        self.grid = image_size // patch
        self.num_patches = self.grid * self.grid
        self.patch_embed = nn.Conv2d(3, dim, patch, patch)
        self.pos = nn.Parameter(torch.randn(1, self.num_patches, dim) * 0.02)
        self.blocks = nn.ModuleList(
            [Block(dim, heads, dim // heads, dim * mlp_ratio, layer_scale=0.1) for _ in range(depth)]
        )
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.dim = dim

    def forward(self, pixels):
        x = self.patch_embed(pixels).flatten(2).transpose(1, 2) + self.pos
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)


def frame_causal_mask(frames, tokens_per_frame):
    f = torch.arange(frames).repeat_interleave(tokens_per_frame)
    return f[None, :] <= f[:, None]  # [q, k]: token of frame i sees frames <= i


class Predictor(nn.Module):
    def __init__(self, num_patches, visual_dim, num_hist, depth=4, heads=4, dim_head=32, mlp_dim=256,
                 emb_dim=10, action_in=10):
        super().__init__()
        self.num_patches, self.visual_dim, self.num_hist, self.emb_dim = num_patches, visual_dim, num_hist, emb_dim
        dim = visual_dim + 2 * emb_dim
        self.dim = dim
        self.action_encoder = nn.Conv1d(action_in, emb_dim, 1)
        self.pos = nn.Parameter(torch.randn(1, num_hist * num_patches, dim) * 0.02)
        self.blocks = nn.ModuleList([Block(dim, heads, dim_head, mlp_dim) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.register_buffer("mask", frame_causal_mask(num_hist, num_patches), persistent=False)

    def embed_actions(self, action):  # [B,H,A] -> [B,H,E]
        return self.action_encoder(action.transpose(1, 2)).transpose(1, 2)

    def forward_tokens(self, z):
        """z: [B,H,N,dim] -> predictions for frames 1..H: [B,H,N,dim]."""
        b, h, n, d = z.shape
        x = z.reshape(b, h * n, d) + self.pos[:, : h * n]
        mask = self.mask[: h * n, : h * n]
        for blk in self.blocks:
            x = blk(x, mask)
        return self.norm(x).reshape(b, h, n, d)

    def tokens(self, visual, proprio_emb, action):
        b, h, n, _ = visual.shape
        a = self.embed_actions(action)
        p = proprio_emb[:, :, None, :].expand(b, h, n, self.emb_dim)
        a = a[:, :, None, :].expand(b, h, n, self.emb_dim)
        return torch.cat([visual, p, a], dim=-1)

    def split(self, out):  # [..., N, dim] -> visual [..., N, D], proprio [..., E]
        return out[..., : self.visual_dim], out[..., :, self.visual_dim: self.visual_dim + self.emb_dim].mean(-2)

    def forward(self, visual, proprio_emb, action):
        out = self.forward_tokens(self.tokens(visual, proprio_emb, action))
        return self.split(out[:, -1])


class ObservationEncoder(nn.Module):
    """What encoder.onnx holds: the visual ViT and the proprio encoder."""

    def __init__(self, vit, proprio_encoder):
        super().__init__()
        self.vit, self.proprio_encoder = vit, proprio_encoder

    def forward(self, pixels, proprio):
        visual = self.vit(pixels)
        pe = self.proprio_encoder(proprio[:, :, None])[:, :, 0]
        return visual, pe
