#!/usr/bin/env python3
"""OmniQuant for qwm bundles: the training step of `qwm quantize --method omniquant`.

`qwm quantize` runs the float model in the planner on calibration seeds, records the inputs its
encoder and predictor were called with (`<calib>/<module>.<input>.npy`), then runs this script,
which reads the bundle's ONNX graphs and, module by module and block by block:

- **LWC** (learnable weight clipping): per Linear layer and per scale block (output channel, or
  group of input rows) a clipping factor `sigmoid(g)` (g starts at 4: factor 0.982) of the block's
  max |w|, so the scale is `sigmoid(g) * absmax / ((qmax - qmin) / 2)`, with qwm's quantizer
  (signed symmetric, round half to even; straight-through gradient of the rounding).
- **LET** (learnable equivalent transformation): per-channel scale `s` (and, with activation
  bits, shift `d`) between a LayerNorm and the Linear layers reading it: the LayerNorm's weight and
  bias become `gamma / s` and `(beta - d) / s`, the Linear's rows `s * W`, its bias `b + d W`;
  and a per-channel scale between q and k of a fused qkv Linear (q columns `/ s`, k columns
  `* s`, which leaves every q.k product unchanged). Both are exact in float; every transform is
  checked numerically before it is trained (a structure the check refuses is left alone).

A block is two consecutive LayerNorm-led segments of the graph (the attention half and the MLP
half of a pre-LN transformer block); its parameters are trained with AdamW to make the block's
outputs, with fake-quantized weights and fed the outputs of the already quantized blocks before
it, match the float block's outputs on the float inputs (mean squared error), as OmniQuant
trains. A block whose trained loss is not below its round-to-nearest loss keeps RTN (recorded).

Writes `<out>/encoder.onnx`, `<out>/predictor.onnx` (the transformed float graphs, same
interface) and `<out>/omniquant.json` (clipping factors per layer, the transforms, the losses).
qwm then quantizes the transformed graphs with these clipping factors into a standard bundle.

Exit codes: 0 done, 2 bad input (named), 3 PyTorch or onnx missing.
"""
import argparse
import json
import math
import os
import sys

MISSING = 3


def die(msg, code=2):
    print(f"omniquant: {msg}", file=sys.stderr)
    sys.exit(code)


try:
    import numpy as np
    import onnx
    from onnx import numpy_helper
    import torch
except ImportError as e:  # pragma: no cover - depends on the interpreter
    die(f"needs PyTorch, onnx and numpy ({e}); install them with: "
        f"{sys.executable} -m pip install torch onnx numpy", MISSING)

ONNX_DTYPES = {1: "float", 6: torch.int32, 7: torch.int64, 9: torch.bool, 11: "float", 10: "float"}


def parse_scheme(s, flag):
    """`float` or w<bits>[a<bits>][-g<size>][-token] -> dict (None for float)."""
    if s == "float":
        return None
    parts = s.split("-")
    head = parts[0]
    if not head.startswith("w"):
        die(f"{flag} '{s}': must start with 'w'")
    wa = head[1:].split("a")
    try:
        wbits = int(wa[0])
        abits = int(wa[1]) if len(wa) > 1 else None
    except ValueError:
        die(f"{flag} '{s}': bits are not numbers")
    group, token = None, False
    for p in parts[1:]:
        if p.startswith("g"):
            group = int(p[1:])
        elif p == "token":
            token = True
        else:
            die(f"{flag} '{s}': unknown part '-{p}'")
    return {"wbits": wbits, "abits": abits, "group": group, "token": token}


# ----------------------------------------------------------------------------------------------
# A small ONNX interpreter on torch (the ops DINO-WM-style exports use), differentiable.


def _ints(t):
    return [int(v) for v in t.reshape(-1).tolist()]


class Graph:
    """An ONNX graph evaluated node by node with torch; float tensors in `dtype`."""

    def __init__(self, model, path, dtype):
        self.model, self.path, self.dtype = model, path, dtype
        g = model.graph
        self.nodes = list(g.node)
        self.inputs = [i.name for i in g.input]
        self.outputs = [o.name for o in g.output]
        self.init = {}
        for t in g.initializer:
            a = numpy_helper.to_array(t)
            self.init[t.name] = self._tensor(a)
        # Identity of an initializer (how exporters share equal constants): the same tensor.
        for n in self.nodes:
            if n.op_type == "Identity" and n.input[0] in self.init:
                self.init[n.output[0]] = self.init[n.input[0]]
        self.consumers = {}
        for i, n in enumerate(self.nodes):
            for s, x in enumerate(n.input):
                self.consumers.setdefault(x, []).append((i, s))
        self.producer = {o: i for i, n in enumerate(self.nodes) for o in n.output}
        self.last_use = {}
        for i, n in enumerate(self.nodes):
            for x in n.input:
                self.last_use[x] = i
        for o in self.outputs:
            self.last_use[o] = len(self.nodes)
        self.constants = {}

    def prune(self, env, upto):
        """Drop values no node at or after `upto` reads (graph outputs stay)."""
        for k in [k for k in env if self.last_use.get(k, -1) < upto]:
            del env[k]

    def _tensor(self, a):
        t = torch.from_numpy(np.array(a))
        if t.is_floating_point():
            t = t.to(self.dtype)
        return t

    def attr(self, node, name, default=None):
        for a in node.attribute:
            if a.name == name:
                return onnx.helper.get_attribute_value(a)
        return default

    def run(self, lo, hi, env, override=None, act_hook=None):
        """Evaluate nodes lo..hi into `env` (name -> tensor). `override[(node, slot)]` replaces
        an input; `act_hook[node](x)` transforms a node's first input (activation quantization)."""
        override = override or {}
        act_hook = act_hook or {}
        for i in range(lo, hi):
            n = self.nodes[i]
            xs = []
            for s, name in enumerate(n.input):
                if (i, s) in override:
                    xs.append(override[(i, s)])
                elif name == "":
                    xs.append(None)
                elif name in env:
                    xs.append(env[name])
                elif name in self.init:
                    xs.append(self.init[name])
                else:
                    die(f"{self.path}: node {n.name} reads '{name}', which nothing produced")
            if i in act_hook:
                xs[0] = act_hook[i](xs[0])
            try:
                outs = self.op(n, xs)
            except SystemExit:
                raise
            except Exception as e:  # a shape or type the interpreter cannot follow
                die(f"{self.path}: node {n.name} ({n.op_type}) failed: {e}")
            for name, v in zip(n.output, outs):
                env[name] = v
        return env

    def op(self, n, x):
        t, a = n.op_type, lambda k, d=None: self.attr(n, k, d)
        if t == "Constant":
            key = id(n)
            if key in self.constants:
                return [self.constants[key]]
            v = a("value")
            if v is None:
                die(f"{self.path}: Constant {n.name} without a tensor value")
            self.constants[key] = self._tensor(numpy_helper.to_array(v))
            return [self.constants[key]]
        if t == "Identity":
            return [x[0]]
        if t in ("Add", "Sub", "Mul", "Div", "Pow", "Equal", "Less", "Greater", "And", "Or"):
            f = {"Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Pow": torch.pow,
                 "Equal": torch.eq, "Less": torch.lt, "Greater": torch.gt,
                 "And": torch.logical_and, "Or": torch.logical_or}
            if t == "Div":
                if x[0].is_floating_point():
                    return [x[0] / x[1]]
                return [torch.div(x[0], x[1], rounding_mode="trunc")]
            return [f[t](x[0], x[1])]
        if t in ("Erf", "Sqrt", "Neg", "Tanh", "Sigmoid", "Relu", "Exp", "Not", "Abs"):
            f = {"Erf": torch.erf, "Sqrt": torch.sqrt, "Neg": torch.neg, "Tanh": torch.tanh,
                 "Sigmoid": torch.sigmoid, "Relu": torch.relu, "Exp": torch.exp,
                 "Not": torch.logical_not, "Abs": torch.abs}
            return [f[t](x[0])]
        if t == "MatMul":
            return [torch.matmul(x[0], x[1])]
        if t == "Gemm":
            A, B = x[0], x[1]
            if a("transA", 0):
                A = A.T
            if a("transB", 0):
                B = B.T
            y = a("alpha", 1.0) * (A @ B)
            if len(x) > 2 and x[2] is not None:
                y = y + a("beta", 1.0) * x[2]
            return [y]
        if t == "Einsum":
            return [torch.einsum(a("equation").decode(), *x)]
        if t == "Softmax":
            return [torch.softmax(x[0], dim=a("axis", -1))]
        if t == "LayerNormalization":
            axis = a("axis", -1)
            axis = axis % x[0].dim()
            shape = list(x[0].shape[axis:])
            b = x[2] if len(x) > 2 else None
            return [torch.nn.functional.layer_norm(x[0], shape, x[1], b, a("epsilon", 1e-5))]
        if t == "ReduceMean":
            axes = a("axes")
            if axes is None and len(x) > 1 and x[1] is not None:
                axes = _ints(x[1])
            keep = bool(a("keepdims", 1))
            if axes is None:
                axes = list(range(x[0].dim()))
            return [x[0].mean(dim=tuple(axes), keepdim=keep)]
        if t == "Shape":
            s = torch.tensor(list(x[0].shape), dtype=torch.int64)
            start, end = a("start", 0), a("end", None)
            return [s[start:end]]
        if t == "Gather":
            axis = a("axis", 0)
            idx = x[1].to(torch.int64)
            size = x[0].shape[axis]
            idx = torch.where(idx < 0, idx + size, idx)
            if idx.dim() == 0:
                return [x[0].select(axis, int(idx))]
            return [torch.index_select(x[0], axis, idx.reshape(-1)).reshape(
                x[0].shape[:axis] + idx.shape + x[0].shape[axis + 1:])]
        if t == "Unsqueeze":
            axes = a("axes") if a("axes") is not None else _ints(x[1])
            y = x[0]
            rank = y.dim() + len(axes)
            for ax in sorted(ax % rank for ax in axes):
                y = y.unsqueeze(ax)
            return [y]
        if t == "Squeeze":
            axes = a("axes") if a("axes") is not None else (_ints(x[1]) if len(x) > 1 else None)
            y = x[0]
            if axes is None:
                return [y.squeeze()]
            for ax in sorted((ax % y.dim() for ax in axes), reverse=True):
                y = y.squeeze(ax)
            return [y]
        if t == "Concat":
            return [torch.cat(x, dim=a("axis"))]
        if t == "Reshape":
            shape = _ints(x[1])
            shape = [x[0].shape[i] if (v == 0 and not a("allowzero", 0)) else v
                     for i, v in enumerate(shape)]
            return [x[0].reshape(shape)]
        if t == "Flatten":
            ax = a("axis", 1) % max(x[0].dim(), 1)
            return [x[0].reshape(int(np.prod(x[0].shape[:ax])), -1)]
        if t == "Transpose":
            perm = a("perm") or list(range(x[0].dim()))[::-1]
            return [x[0].permute(*perm)]
        if t == "Slice":
            data = x[0]
            starts, ends = _ints(x[1]), _ints(x[2])
            axes = _ints(x[3]) if len(x) > 3 and x[3] is not None else list(range(len(starts)))
            steps = _ints(x[4]) if len(x) > 4 and x[4] is not None else [1] * len(starts)
            idx = [slice(None)] * data.dim()
            for s, e, ax, st in zip(starts, ends, axes, steps):
                if st <= 0:
                    die(f"{self.path}: Slice {n.name} with step {st} is not supported")
                dim = data.shape[ax]
                s = max(0, min(dim, s + dim if s < 0 else s))
                e = max(0, min(dim, e + dim if e < 0 else e))
                idx[ax % data.dim()] = slice(s, e, st)
            return [data[tuple(idx)]]
        if t == "Split":
            axis = a("axis", 0)
            split = a("split")
            if split is None and len(x) > 1 and x[1] is not None:
                split = _ints(x[1])
            if split is None:
                k = len(n.output)
                split = [x[0].shape[axis] // k] * k
            return list(torch.split(x[0], split, dim=axis))
        if t == "Expand":
            shape = _ints(x[1])
            out = torch.broadcast_shapes(tuple(x[0].shape), tuple(shape))
            return [x[0].expand(out)]
        if t == "Tile":
            return [x[0].repeat(*_ints(x[1]))]
        if t == "ConstantOfShape":
            v = a("value")
            val = numpy_helper.to_array(v) if v is not None else np.zeros(1, np.float32)
            return [self._tensor(np.full(_ints(x[0]), val.reshape(-1)[0], dtype=val.dtype))]
        if t == "Where":
            return [torch.where(x[0], x[1], x[2])]
        if t == "Cast":
            to = ONNX_DTYPES.get(a("to"))
            if to is None:
                die(f"{self.path}: Cast {n.name} to ONNX type {a('to')} is not supported")
            return [x[0].to(self.dtype if to == "float" else to)]
        if t == "Range":
            return [torch.arange(x[0].item(), x[1].item(), x[2].item(), dtype=x[0].dtype)]
        if t in ("Max", "Min"):
            f = torch.maximum if t == "Max" else torch.minimum
            y = x[0]
            for z in x[1:]:
                y = f(y, z)
            return [y]
        if t == "Clip":
            lo = x[1] if len(x) > 1 and x[1] is not None else None
            hi = x[2] if len(x) > 2 and x[2] is not None else None
            return [torch.clamp(x[0], lo, hi)]
        if t == "Conv":
            w = x[1]
            b = x[2] if len(x) > 2 else None
            nd = w.dim() - 2
            strides = a("strides") or [1] * nd
            dil = a("dilations") or [1] * nd
            pads = a("pads") or [0] * (2 * nd)
            if list(pads[:nd]) != list(pads[nd:]):
                die(f"{self.path}: Conv {n.name} with asymmetric pads is not supported")
            f = {1: torch.nn.functional.conv1d, 2: torch.nn.functional.conv2d}.get(nd)
            if f is None:
                die(f"{self.path}: {nd}-d Conv {n.name} is not supported")
            return [f(x[0], w, b, strides, list(pads[:nd]), dil, a("group", 1))]
        die(f"{self.path}: ONNX op {t} (node {n.name}) is not supported by the OmniQuant step")


# ----------------------------------------------------------------------------------------------
# The structure OmniQuant works on: Linear layers, LayerNorm -> Linear groups, blocks.


class Linear:
    def __init__(self, g, i):
        n = g.nodes[i]
        self.idx, self.node, self.weight = i, n.name, n.input[1]
        w = g.init[self.weight]
        self.k, self.n = int(w.shape[0]), int(w.shape[1])
        # A bias: the MatMul's only consumer adds a 1-d initializer of n values.
        self.bias = None
        cons = g.consumers.get(n.output[0], [])
        if len(cons) == 1 and g.nodes[cons[0][0]].op_type == "Add":
            j, s = cons[0]
            other = g.nodes[j].input[1 - s]
            b = g.init.get(other)
            if b is not None and tuple(b.shape) == (self.n,):
                self.bias = (j, 1 - s, other)


def find_linears(g):
    out = []
    for i, n in enumerate(g.nodes):
        if n.op_type == "MatMul" and len(n.input) == 2:
            w = g.init.get(n.input[1])
            if w is not None and w.dim() == 2 and w.is_floating_point():
                out.append(Linear(g, i))
    return out


def find_blocks(g, linears):
    """Blocks: pairs of consecutive LayerNorm-led segments whose LayerNorm feeds a Linear."""
    by_idx = {l.idx: l for l in linears}
    leads = []
    for i, n in enumerate(g.nodes):
        if n.op_type != "LayerNormalization":
            continue
        cons = g.consumers.get(n.output[0], [])
        if cons and any(j in by_idx and s == 0 for j, s in cons):
            leads.append(i)
    if not leads:
        return [], leads
    bounds = leads[::2] + [len(g.nodes)]
    blocks = []
    for lo, hi in zip(bounds, bounds[1:]):
        blocks.append((lo, hi))
    return blocks, leads


def block_io(g, lo, hi):
    """Names a block reads from outside it, and float tensors it leaves for later nodes."""
    inside = set()
    reads = []
    for i in range(lo, hi):
        n = g.nodes[i]
        for x in n.input:
            if x and x not in inside and x not in g.init and x not in reads:
                reads.append(x)
        inside.update(n.output)
    later = set()
    for i in range(hi, len(g.nodes)):
        later.update(g.nodes[i].input)
    later.update(g.outputs)
    leaves = [o for i in range(lo, hi) for o in g.nodes[i].output if o in later]
    return reads, leaves


# ----------------------------------------------------------------------------------------------
# Quantizers (qwm's semantics) with straight-through rounding.


def ste_round(x):
    return (torch.round(x) - x).detach() + x


def fake_quant_weight(w, bits, group, clip):
    """w [K, N]; clip [groups, N] in (0, 1]. Signed symmetric, scale = clip*absmax/((qmax-qmin)/2)."""
    k, n = w.shape
    rows = min(group or k, k)
    groups = -(-k // rows)
    pad = groups * rows - k
    wp = torch.cat([w, w.new_zeros(pad, n)]) if pad else w
    blocks = wp.reshape(groups, rows, n)
    qmax = 2 ** (bits - 1) - 1
    qmin = -qmax - 1
    absmax = blocks.abs().amax(dim=1)  # [groups, N]
    scale = clip * absmax / ((qmax - qmin) / 2.0)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.clamp(ste_round(blocks / scale[:, None, :]), qmin, qmax) * scale[:, None, :]
    return q.reshape(groups * rows, n)[:k]


def fake_quant_act(x, bits, token):
    """Dynamic asymmetric unsigned activation quantization (per tensor, or per token)."""
    qmax = 2 ** bits - 1
    if token:
        lo = x.amin(dim=-1, keepdim=True).clamp(max=0)
        hi = x.amax(dim=-1, keepdim=True).clamp(min=0)
    else:
        lo, hi = x.min().clamp(max=0), x.max().clamp(min=0)
    scale = ((hi - lo) / qmax).clamp(min=1e-8).detach()
    zp = torch.round(-lo / scale).detach()
    q = torch.clamp(ste_round(x / scale) + zp, 0, qmax)
    return (q - zp) * scale


# ----------------------------------------------------------------------------------------------
# One module: the transforms, their parameters, training, folding.


class LetGroup:
    """A LayerNorm and the Linear layers reading its output: scale (and shift) between them."""

    def __init__(self, g, ln_idx, linears):
        self.ln = ln_idx
        self.linears = linears
        n = g.nodes[ln_idx]
        self.ln_name = n.name
        self.gamma_name = n.input[1]
        self.beta_name = n.input[2] if len(n.input) > 2 and n.input[2] else None
        self.dim = linears[0].k
        self.shift = False
        self.qk = []  # fused qkv linears of this group with a q-k scale


class Module:
    def __init__(self, name, path, scheme, opts, dtype=torch.float32):
        self.name, self.path, self.scheme, self.opts = name, path, scheme, opts
        self.model = onnx.load(path)
        self.g = Graph(self.model, path, dtype)
        self.linears = find_linears(self.g)
        self.blocks, self.leads = find_blocks(self.g, self.linears)
        by_idx = {l.idx: l for l in self.linears}
        self.lets = []
        if opts.let:
            for ln in self.leads:
                out = self.g.nodes[ln].output[0]
                # Shape nodes read only the shape, which the transform keeps.
                cons = [(j, s) for j, s in self.g.consumers.get(out, [])
                        if self.g.nodes[j].op_type != "Shape"]
                if not cons or any(j not in by_idx or s != 0 for j, s in cons):
                    continue  # the LayerNorm's output goes elsewhere too: no exact transform
                node = self.g.nodes[ln]
                if node.input[1] not in self.g.init or (len(node.input) > 2 and node.input[2]
                                                         and node.input[2] not in self.g.init):
                    continue  # weight or bias computed, not stored: nothing to fold into
                self.lets.append(LetGroup(self.g, ln, [by_idx[j] for j, _ in cons]))

    def block_of(self, idx):
        for b, (lo, hi) in enumerate(self.blocks):
            if lo <= idx < hi:
                return b
        return None


def initial_params(mod, lin_stats, use_shift):
    """Parameters of every Linear (LWC logits) and every LET group (log scale, shift, qk)."""
    p = {}
    sch = mod.scheme
    for l in mod.linears:
        rows = min(sch["group"] or l.k, l.k)
        groups = -(-l.k // rows)
        p[("lwc", l.node)] = torch.full((groups, l.n), 4.0, dtype=torch.float32)
    for grp in mod.lets:
        # SmoothQuant's start (alpha 0.5): s = sqrt(max|x|) / sqrt(max|w|) per input channel.
        xmax = lin_stats[grp.linears[0].node]["absmax"]
        wmax = torch.stack([mod.g.init[l.weight].abs().amax(dim=1) for l in grp.linears]).amax(0)
        s = (xmax.clamp(min=1e-5).sqrt() / wmax.clamp(min=1e-5).sqrt()).clamp(1e-2, 1e2)
        s = s / s.log().mean().exp()  # geometric mean 1
        p[("let_s", grp.ln_name)] = s.log().float()
        if use_shift and grp.beta_name and all(l.bias is not None for l in grp.linears):
            grp.shift = True
            mid = lin_stats[grp.linears[0].node]["mid"]
            p[("let_d", grp.ln_name)] = mid.float().clone()
        for l in grp.linears:
            if l.n % 3 == 0 and grp.qk_ok.get(l.node, False):
                p[("qk", l.node)] = torch.zeros(l.n // 3, dtype=torch.float32)
                grp.qk.append(l.node)
    return p


def omse_start(mod, params):
    """Start every clipping factor at its block's MSE-optimal ratio (0.35..1 in 101 steps, on the
    weights as transformed at the start), as OMSE chooses it: at 3 and 4 bits the paper's start
    (0.982) is far from where clipping should be, and few calibration steps do not get there."""
    sch = mod.scheme
    ov = transformed(mod, params, quantize=False)
    qmax = 2 ** (sch["wbits"] - 1) - 1
    qmin = -qmax - 1
    for l in mod.linears:
        w = ov[(l.idx, 1)].detach().double()
        k, n = w.shape
        rows = min(sch["group"] or k, k)
        groups = -(-k // rows)
        pad = groups * rows - k
        wp = torch.cat([w, w.new_zeros(pad, n)]) if pad else w
        blocks = wp.reshape(groups, rows, n)
        absmax = blocks.abs().amax(dim=1)
        best = torch.full((groups, n), math.inf, dtype=torch.float64)
        ratio = torch.ones((groups, n), dtype=torch.float64)
        for i in range(101):
            r = 0.35 + 0.65 * i / 100
            scale = r * absmax / ((qmax - qmin) / 2.0)
            scale = torch.where(scale > 0, scale, torch.ones_like(scale))
            q = torch.clamp(torch.round(blocks / scale[:, None, :]), qmin, qmax) * scale[:, None, :]
            err = ((blocks - q) ** 2).sum(dim=1)
            better = err < best
            best = torch.where(better, err, best)
            ratio = torch.where(better, torch.full_like(ratio, r), ratio)
        ratio = ratio.clamp(max=0.999)
        params[("lwc", l.node)] = torch.log(ratio / (1 - ratio)).float()


def transformed(mod, params, quantize, lin_filter=None):
    """Overrides (node, slot) -> tensor for the transformed (and optionally fake-quantized) module."""
    g, sch = mod.g, mod.scheme
    dt = g.dtype
    weights = {l.node: g.init[l.weight].to(dt) for l in mod.linears}
    biases = {l.node: g.init[l.bias[2]].to(dt) for l in mod.linears if l.bias is not None}
    ov = {}
    for grp in mod.lets:
        key = ("let_s", grp.ln_name)
        if key not in params:
            continue
        s = params[key].to(dt).exp()
        d = params.get(("let_d", grp.ln_name))
        d = d.to(dt) if d is not None and grp.shift else None
        gamma = g.init[grp.gamma_name].to(dt)
        beta = g.init[grp.beta_name].to(dt) if grp.beta_name else torch.zeros_like(gamma)
        if d is not None:
            beta = beta - d
        ov[(grp.ln, 1)] = gamma / s
        if grp.beta_name:
            ov[(grp.ln, 2)] = beta / s
        for l in grp.linears:
            w = weights[l.node]
            if d is not None:
                biases[l.node] = biases[l.node] + d @ w
            weights[l.node] = s[:, None] * w
        for node in grp.qk:
            qk = params.get(("qk", node))
            if qk is None:
                continue
            e = qk.to(dt).exp()
            m = e.numel()
            col = torch.cat([1.0 / e, e, torch.ones(m, dtype=dt)])
            weights[node] = weights[node] * col[None, :]
            if node in biases:
                biases[node] = biases[node] * col
    for l in mod.linears:
        w = weights[l.node]
        if quantize and (lin_filter is None or l.node in lin_filter):
            clip = torch.sigmoid(params[("lwc", l.node)]).to(dt)
            w = fake_quant_weight(w, sch["wbits"], sch["group"], clip)
        ov[(l.idx, 1)] = w
        if l.bias is not None:
            ov[(l.bias[0], l.bias[1])] = biases[l.node]
    return ov


def act_hooks(mod):
    sch = mod.scheme
    if sch["abits"] is None:
        return {}
    return {l.idx: (lambda x, b=sch["abits"], t=sch["token"]: fake_quant_act(x, b, t))
            for l in mod.linears}


def check_equivalence(mod, params, chunks, tol):
    """The transformed float module (no quantization) against the original, in float64."""
    g64 = Graph(mod.model, mod.path, torch.float64)
    saved = mod.g
    mod.g = g64
    try:
        worst = 0.0
        for feeds in chunks[:2]:
            env0 = g64.run(0, len(g64.nodes), {k: v.to(torch.float64) for k, v in feeds.items()})
            env1 = g64.run(0, len(g64.nodes), {k: v.to(torch.float64) for k, v in feeds.items()},
                           override=transformed(mod, params, quantize=False))
            for o in g64.outputs:
                a, b = env0[o], env1[o]
                if a.is_floating_point():
                    scale = a.abs().max().clamp(min=1.0)
                    worst = max(worst, float(((a - b).abs().max() / scale)))
        return worst
    finally:
        mod.g = saved


def probe_transforms(mod, lin_stats, chunks):
    """Which q-k scales are exact: try each fused-qkv candidate with a random scale, keep the
    ones whose float outputs do not move."""
    gen = torch.Generator().manual_seed(1)
    for grp in mod.lets:
        grp.qk_ok = {}
        for l in grp.linears:
            if l.n % 3 != 0:
                continue
            grp.qk_ok[l.node] = True
            p = {("qk", l.node): torch.randn(l.n // 3, generator=gen) * 0.5,
                 ("let_s", grp.ln_name): torch.zeros(grp.dim)}
            trial = LetProbe(grp, l.node)
            with trial:
                err = check_equivalence(mod, p, chunks, 0)
            grp.qk_ok[l.node] = err < 1e-9
    return


class LetProbe:
    """Temporarily make `grp` carry only the q-k scale of `node`."""

    def __init__(self, grp, node):
        self.grp, self.node = grp, node

    def __enter__(self):
        self.saved = (self.grp.qk, self.grp.shift)
        self.grp.qk, self.grp.shift = [self.node], False

    def __exit__(self, *exc):
        self.grp.qk, self.grp.shift = self.saved


def collect_stats(mod, chunks):
    """Per Linear: per-channel max |x| and mid-range of its input over the calibration set."""
    st = {}
    for feeds in chunks:
        env = mod.g.run(0, len(mod.g.nodes), dict(feeds))
        for l in mod.linears:
            x = env[mod.g.nodes[l.idx].input[0]].detach().reshape(-1, l.k).double()
            s = st.setdefault(l.node, {"absmax": torch.zeros(l.k, dtype=torch.float64),
                                       "min": torch.full((l.k,), math.inf, dtype=torch.float64),
                                       "max": torch.full((l.k,), -math.inf, dtype=torch.float64)})
            s["absmax"] = torch.maximum(s["absmax"], x.abs().amax(0))
            s["min"] = torch.minimum(s["min"], x.amin(0))
            s["max"] = torch.maximum(s["max"], x.amax(0))
    for s in st.values():
        s["mid"] = (s["min"] + s["max"]) / 2
    return st


def block_loss(mod, lo, hi, reads, leaves, q_envs, fp_envs, params, quantize=True):
    g = mod.g
    ov = transformed(mod, params, quantize=quantize)
    hooks = act_hooks(mod) if quantize else {}
    total = 0.0
    for qe, fe in zip(q_envs, fp_envs):
        env = {k: qe[k] for k in reads}
        env = g.run(lo, hi, env, override=ov, act_hook=hooks)
        for o in leaves:
            if fe[o].is_floating_point():
                total = total + torch.mean((env[o] - fe[o]) ** 2)
    return total / max(len(q_envs), 1)


def quantize_module(mod, chunks, log):
    opts = mod.opts
    g = mod.g
    lin_stats = collect_stats(mod, chunks)
    probe_transforms(mod, lin_stats, chunks)
    params = initial_params(mod, lin_stats, use_shift=mod.scheme["abits"] is not None)
    if opts.lwc_init == "omse":
        omse_start(mod, params)
    # Exactness of the transform at its starting point (and with perturbed parameters).
    gen = torch.Generator().manual_seed(2)
    pert = {k: (v + 0.3 * torch.randn(v.shape, generator=gen) if k[0] != "lwc" else v)
            for k, v in params.items()}
    eq_err = check_equivalence(mod, pert, chunks, 0)
    if eq_err > 1e-9:
        die(f"{mod.path}: the equivalent transformation moves the float outputs by {eq_err:.2e}")
    # fp path and quantized path, block by block.
    fp_envs = [dict(f) for f in chunks]
    q_envs = [dict(f) for f in chunks]
    record_blocks = []
    first = mod.blocks[0][0] if mod.blocks else len(g.nodes)
    rtn_params = {k: (torch.full_like(v, 30.0) if k[0] == "lwc" else torch.zeros_like(v))
                  for k, v in params.items()}  # sigmoid(30) = 1 in float32: plain RTN
    # Nodes before the first block (patch embedding ...): float, with RTN for any Linear there.
    ov_rtn = transformed(mod, rtn_params, quantize=True)
    for fe, qe in zip(fp_envs, q_envs):
        g.run(0, first, fe)
        g.run(0, first, qe, override=ov_rtn, act_hook=act_hooks(mod))
    for b, (lo, hi) in enumerate(mod.blocks):
        reads, leaves = block_io(g, lo, hi)
        for fe in fp_envs:
            g.run(lo, hi, fe)
        with torch.no_grad():
            fp_targets = [{o: fe[o].detach() for o in leaves} for fe in fp_envs]
        block_lins = {l.node for l in mod.linears if lo <= l.idx < hi}
        block_lets = {grp.ln_name for grp in mod.lets if lo <= grp.ln < hi}
        trainable = []
        for k, v in params.items():
            mine = (k[0] == "lwc" and k[1] in block_lins) or \
                   (k[0] in ("let_s", "let_d") and k[1] in block_lets) or \
                   (k[0] == "qk" and k[1] in block_lins)
            if mine:
                v.requires_grad_(True)
                trainable.append((k, v))
        with torch.no_grad():
            loss_rtn = float(block_loss(mod, lo, hi, reads, leaves, q_envs, fp_targets, rtn_params))
            loss_init = float(block_loss(mod, lo, hi, reads, leaves, q_envs, fp_targets, params))
        lwc = [v for k, v in trainable if k[0] == "lwc"]
        let = [v for k, v in trainable if k[0] != "lwc"]
        groups = [{"params": lwc, "lr": opts.lwc_lr}]
        if let:
            groups.append({"params": let, "lr": opts.let_lr})
        opt = torch.optim.AdamW(groups, weight_decay=0.0)
        best = (loss_init, {k: v.detach().clone() for k, v in trainable})
        for ep in range(opts.epochs):
            total = 0.0
            for qe, ft in zip(q_envs, fp_targets):
                opt.zero_grad()
                loss = block_loss(mod, lo, hi, reads, leaves, [qe], [ft], params)
                loss.backward()
                opt.step()
                total += float(loss.detach())
            total /= len(q_envs)
            if total < best[0]:
                best = (total, {k: v.detach().clone() for k, v in trainable})
        for k, v in trainable:
            v.requires_grad_(False)
            v.copy_(best[1][k])
        with torch.no_grad():
            loss_final = float(block_loss(mod, lo, hi, reads, leaves, q_envs, fp_targets, params))
        kept = "omniquant"
        if not loss_final < loss_rtn:
            kept = "rtn"
            for k, v in trainable:
                v.copy_(rtn_params[k])
            loss_final = loss_rtn
        log(f"  {mod.name} block {b}: loss rtn {loss_rtn:.3e}  start {loss_init:.3e}  "
            f"trained {loss_final:.3e} ({kept})")
        record_blocks.append({"nodes": [g.nodes[lo].name, g.nodes[hi - 1].name],
                              "linears": sorted(block_lins), "loss_rtn": loss_rtn,
                              "loss_start": loss_init, "loss_final": loss_final, "kept": kept})
        # Advance the quantized path through the quantized block.
        with torch.no_grad():
            ov = transformed(mod, params, quantize=True)
            for qe in q_envs:
                g.run(lo, hi, qe, override=ov, act_hook=act_hooks(mod))
        for e in fp_envs + q_envs:
            g.prune(e, hi)
    # Linears outside every block: RTN (clip 1).
    for l in mod.linears:
        if mod.block_of(l.idx) is None:
            params[("lwc", l.node)] = torch.full_like(params[("lwc", l.node)], 30.0)
    eq_final = check_equivalence(mod, params, chunks, 0)
    if eq_final > 1e-9:
        die(f"{mod.path}: the learned transformation moves the float outputs by {eq_final:.2e}")
    return params, record_blocks, eq_err


def write_module(mod, params, out_path):
    """The transformed float graph: initializers replaced (un-shared where another node reads them)."""
    g = mod.g
    ov = transformed(mod, params, quantize=False)
    model = mod.model
    inits = {t.name: t for t in model.graph.initializer}
    uses = {}
    for n in model.graph.node:
        for x in n.input:
            uses[x] = uses.get(x, 0) + 1
    for (i, s), v in sorted(ov.items()):
        node = model.graph.node[i]
        name = node.input[s]
        arr = v.detach().to(torch.float32).numpy()
        orig = g.init[name].to(torch.float32).numpy()
        if orig.shape != arr.shape:
            die(f"internal: {name} changed shape {orig.shape} -> {arr.shape}")
        if np.array_equal(orig, arr):
            continue
        if uses[name] > 1 or name not in inits:  # shared, or an Identity of an initializer
            new = f"{name}.omniquant.{i}"
            model.graph.initializer.append(numpy_helper.from_array(arr, new))
            node.input[s] = new
        else:
            inits[name].CopyFrom(numpy_helper.from_array(arr, name))
    onnx.save(model, out_path)


def load_chunks(g, calib, module, batch):
    feeds = {}
    for name in g.inputs:
        p = os.path.join(calib, f"{module}.{name}.npy")
        if not os.path.exists(p):
            die(f"{p}: missing (calibration inputs of {module} input '{name}')")
        a = np.load(p)
        if not np.isfinite(a).all():
            die(f"{p}: contains NaN or Inf")
        feeds[name] = torch.from_numpy(a.astype(np.float32))
    n = {v.shape[0] for v in feeds.values()}
    if len(n) != 1 or 0 in n:
        die(f"{calib}: {module} calibration inputs disagree on the sample count ({sorted(n)})")
    n = n.pop()
    return [{k: v[i:i + batch] for k, v in feeds.items()} for i in range(0, n, batch)], n


def main():
    if sys.argv[1:] == ["--check"]:
        return  # the imports above succeeded
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="float bundle folder")
    ap.add_argument("--calib", required=True, help="folder of <module>.<input>.npy calibration inputs")
    ap.add_argument("--out", required=True, help="output folder (created)")
    ap.add_argument("--encoder", default="float")
    ap.add_argument("--predictor", default="float")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--lwc-lr", type=float, default=1e-2)
    ap.add_argument("--let-lr", type=float, default=5e-3)
    ap.add_argument("--no-let", dest="let", action="store_false")
    ap.add_argument("--lwc-init", choices=["omse", "paper"], default="omse",
                    help="clipping start: each block's MSE-optimal ratio, or 0.982 (the paper's)")
    ap.add_argument("--batch", type=int, default=16, help="calibration samples per step")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    opts = ap.parse_args()
    if opts.epochs < 0 or opts.batch < 1 or not (opts.lwc_lr > 0 and opts.let_lr > 0):
        die("--epochs must be >= 0, --batch >= 1, learning rates > 0")
    torch.manual_seed(opts.seed)
    torch.set_num_threads(max(1, opts.threads))
    torch.use_deterministic_algorithms(True)
    manifest_path = os.path.join(opts.model, "manifest.json")
    try:
        with open(manifest_path) as f:
            manifest = json.load(f)
    except (OSError, ValueError) as e:
        die(f"{manifest_path}: {e}")
    os.makedirs(opts.out, exist_ok=True)
    result = {"version": 1, "epochs": opts.epochs, "lwc_lr": opts.lwc_lr, "let_lr": opts.let_lr,
              "let": opts.let, "batch": opts.batch, "seed": opts.seed, "modules": {}}
    log = lambda s: print(s, file=sys.stderr, flush=True)
    for module, flag in (("encoder", "--encoder"), ("predictor", "--predictor")):
        spec = manifest.get("graphs", {}).get(module, {})
        path = os.path.join(opts.model, spec.get("file", f"{module}.onnx"))
        scheme = parse_scheme(getattr(opts, module), flag)
        if scheme is None:
            continue
        mod = Module(module, path, scheme, opts)
        chunks, n = load_chunks(mod.g, opts.calib, module, opts.batch)
        log(f"omniquant: {module} ({getattr(opts, module)}): {len(mod.linears)} Linear layers, "
            f"{len(mod.blocks)} blocks, {len(mod.lets)} LayerNorm transforms, {n} calibration samples")
        params, blocks, eq_err = quantize_module(mod, chunks, log)
        write_module(mod, params, os.path.join(opts.out, os.path.basename(path)))
        layers = {}
        for l in mod.linears:
            clip = torch.sigmoid(params[("lwc", l.node)]).double()
            layers[l.node] = {"clip": [float(v) for v in clip.reshape(-1)],
                              "groups": int(clip.shape[0]), "n": l.n}
        lets = []
        for grp in mod.lets:
            s = params[("let_s", grp.ln_name)].double().exp()
            e = {"norm": grp.ln_name, "linears": [l.node for l in grp.linears],
                 "scale_range": [float(s.min()), float(s.max())], "shift": grp.shift,
                 "qk": list(grp.qk)}
            lets.append(e)
        result["modules"][module] = {"scheme": getattr(opts, module), "samples": n,
                                     "equivalence_error": eq_err, "blocks": blocks,
                                     "layers": layers, "transforms": lets}
    with open(os.path.join(opts.out, "omniquant.json"), "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
