"""Train a DINO-WM-style world model on a `qwm dataset` and export it as a qwm bundle.

Usage (from the repository root, after `pip install -r models/requirements.txt`):
  cargo run --release -- dataset --env wall --episodes 2000 --steps 50 --seed 0 --out data/wall
  OMP_NUM_THREADS=2 python models/train_wm.py --data data/wall --out models/wall
  (`models/train_wall.py` is the same with Wall's default work folder.)

The environment comes from the dataset's meta.json (wall, pointmaze, pusht): action and proprio
widths from the arrays, the action bounds written to the manifest from the environment
(Wall +-2.45, PointMaze and PushT +-1), the encoder's state probe on the standardized states (Wall:
position and layout scaled as the shipped model was trained; PushT: agent position and four points of
the T, in pixels, so that the latents carry the block's pose without the angle's wrap-around).

Stages (each checkpointed in --work, so a killed run resumes):
 1. encoder pre-training: a ViT on frames as an autoencoder (per-patch pixel reconstruction) plus a
    per-token state probe (every token regresses the dot position and the wall layout), standing in for
    DINOv2's global, smooth features; then frozen.
 2. latents of every frame precomputed with the frozen encoder (as DINO-WM).
 3. predictor training on latents: teacher-forced next-frame MSE (visual + proprio parts) plus an
    autoregressive rollout loss over the same sequence.
 4. evaluation without a planner, ONNX export (opset 17, single files, dynamic batch), parity fixtures and
    manifest.json.
"""
import argparse, json, math, os, time
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from wm import ViTEncoder, Predictor, ObservationEncoder
from bundle_io import export_bundle

def log(*a):
    print(time.strftime("%H:%M:%S"), *a, flush=True)


def load_dataset(d):
    meta = json.load(open(os.path.join(d, "meta.json")))
    arr = {k: np.load(os.path.join(d, f"{k}.npy"), mmap_mode="r") for k in ["frames", "actions", "states", "proprio", "layout"]}
    return meta, arr


def to_pixels(frames_u8):
    """uint8 [..., S, S, 3] -> normalized float [..., 3, S, S] (mean 0.5, std 0.5)."""
    x = torch.from_numpy(np.ascontiguousarray(frames_u8)).float() / 255.0
    x = x.movedim(-1, -3)
    return (x - 0.5) / 0.5


def cosine_lr(step, total, base, warmup=200):
    if step < warmup:
        return base * (step + 1) / warmup
    p = (step - warmup) / max(1, total - warmup)
    return base * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * p)))


def spearman(a, b):
    ra = np.argsort(np.argsort(a)).astype(np.float64)
    rb = np.argsort(np.argsort(b)).astype(np.float64)
    ra -= ra.mean(); rb -= rb.mean()
    return float((ra * rb).sum() / math.sqrt((ra * ra).sum() * (rb * rb).sum()))


# Points of PushT's T in its body frame (the frame of the state's block position and angle): the bar's
# two ends, the joint and the stem's foot. Their world positions vary smoothly with the block's pose
# (the raw angle wraps), so a probe on them makes latent distance track pose error.
PUSHT_KEYPOINTS = np.array([[-60.0, 15.0], [60.0, 15.0], [0.0, 30.0], [0.0, 120.0]], dtype=np.float32)


def pusht_keypoints(states):
    """PushT states [..., 7] -> [..., 2 + 2K]: agent position, then the T's keypoints in world pixels."""
    c, s = np.cos(states[..., 4:5]), np.sin(states[..., 4:5])
    kx, ky = PUSHT_KEYPOINTS[:, 0], PUSHT_KEYPOINTS[:, 1]
    wx = states[..., 2:3] + c * kx - s * ky
    wy = states[..., 3:4] + s * kx + c * ky
    kp = np.stack([wx, wy], -1).reshape(*states.shape[:-1], -1)
    return np.concatenate([states[..., :2], kp], -1).astype(np.float32)


ACTION_BOUND = {"wall": 2.45, "pointmaze": 1.0, "pusht": 1.0}
ALPHA = {"wall": 1.0, "pointmaze": 0.0, "pusht": 1.0}


def main(argv=None, default_work=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--work", default=None, help="checkpoint folder (default data/train_<env>)")
    ap.add_argument("--alpha", type=float, default=None,
                    help="objective weight of the proprio term (default: DINO-WM's, 1 for Wall/PushT, 0 for PointMaze)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--enc-steps", type=int, default=3000)
    ap.add_argument("--pred-steps", type=int, default=12000)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--enc-dim", type=int, default=64)
    ap.add_argument("--enc-depth", type=int, default=4)
    ap.add_argument("--patch", type=int, default=16)
    ap.add_argument("--pred-depth", type=int, default=4)
    ap.add_argument("--pred-heads", type=int, default=4)
    ap.add_argument("--pred-dim-head", type=int, default=32)
    ap.add_argument("--pred-mlp", type=int, default=256)
    ap.add_argument("--num-hist", type=int, default=1)
    ap.add_argument("--frameskip", type=int, default=5)
    ap.add_argument("--rollout", type=int, default=3, help="sequence length (transitions) per predictor sample")
    ap.add_argument("--init-predictor", default=None, help="fine-tune: start from this predictor checkpoint")
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--proprio-scale", type=float, default=5.0,
                    help="squared gain of the frozen proprio projection (sets the proprio term's weight in the objective)")
    ap.add_argument("--wall-aware", type=float, default=0.0,
                    help="C > 0: the encoder's first 8 channels of every token also regress a wall-aware coordinate "
                         "side * |y - door_y| so that the latent objective weighs it C times the proprio term "
                         "(see models/wall/README.md: a plain Euclidean landscape traps CEM at the wall)")
    ap.add_argument("--keypoint-gain", type=float, default=0.0,
                    help="G > 0 (PushT): the first channels of every token also regress G x the standardized probe "
                         "(agent position and the T's keypoints), so that far from the goal the latent objective "
                         "keeps growing with the block's pose error instead of saturating once the rendered T no "
                         "longer overlaps the goal's (see models/pusht/README.md)")
    ap.add_argument("--init-encoder", default=None, help="fine-tune the encoder from this checkpoint")
    ap.add_argument("--enc-lr", type=float, default=1e-3)
    ap.add_argument("--norm-from", default=None,
                    help="take action/proprio normalization from this manifest.json (keeps a fine-tuned "
                         "model's inputs where its initial checkpoint had them) instead of the data")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    os.makedirs(args.out, exist_ok=True)

    meta, D = load_dataset(args.data)
    env = meta["env"]
    if env not in ACTION_BOUND:
        raise SystemExit(f"{args.data}: dataset of environment '{env}', expected one of {sorted(ACTION_BOUND)}")
    if args.keypoint_gain > 0 and env != "pusht":
        raise SystemExit("--keypoint-gain applies to pusht datasets only")
    if args.wall_aware > 0 and env != "wall":
        raise SystemExit("--wall-aware applies to wall datasets only")
    args.work = args.work or default_work or f"data/train_{env}"
    alpha = ALPHA[env] if args.alpha is None else args.alpha
    os.makedirs(args.work, exist_ok=True)
    E, T, S = meta["episodes"], meta["steps"], meta["image_size"]
    n_val = max(1, E // 10)
    train_eps, val_eps = np.arange(0, E - n_val), np.arange(E - n_val, E)
    actions = np.asarray(D["actions"], dtype=np.float32)
    proprio = np.asarray(D["proprio"], dtype=np.float32)
    states = np.asarray(D["states"], dtype=np.float32)
    layout = np.asarray(D["layout"], dtype=np.float32)
    A, PD = actions.shape[-1], proprio.shape[-1]
    a_mean, a_std = actions[train_eps].reshape(-1, A).mean(0), actions[train_eps].reshape(-1, A).std(0)
    p_mean, p_std = proprio[train_eps].reshape(-1, PD).mean(0), proprio[train_eps].reshape(-1, PD).std(0)
    p_std = np.maximum(p_std, 1e-6)
    # The encoder's probe target: Wall's position and layout as the shipped model was trained, else
    # the standardized state.
    probe_src = np.concatenate([states, np.repeat(layout[:, None, :], T + 1, 1)], -1) if layout.shape[-1] else states
    if env == "pusht":
        probe_src = pusht_keypoints(states)
    s_mean = probe_src[train_eps].reshape(-1, probe_src.shape[-1]).mean(0)
    s_std = np.maximum(probe_src[train_eps].reshape(-1, probe_src.shape[-1]).std(0), 1e-6)
    if env == "wall":
        s_mean, s_std = np.full_like(s_mean, 32.0), np.full_like(s_std, 16.0)
    elif env == "pusht":
        # one isotropic scale for every coordinate, so that probe distances are pixel distances
        s_mean, s_std = np.full_like(s_mean, 256.0), np.full_like(s_std, 128.0)
    n_probe = probe_src.shape[-1]
    if args.norm_from:
        nm = json.load(open(args.norm_from))
        a_mean, a_std = np.array(nm["action_mean"], np.float32), np.array(nm["action_std"], np.float32)
        p_mean, p_std = np.array(nm["proprio_mean"], np.float32), np.array(nm["proprio_std"], np.float32)
        log(f"normalization from {args.norm_from}")
    log(f"dataset {E} episodes x {T} steps, {S}px; action mean {a_mean} std {a_std}; proprio mean {p_mean} std {p_std}")
    frames = D["frames"]

    # ---------------- 1. encoder pre-training ----------------
    vit = ViTEncoder(image_size=S, patch=args.patch, dim=args.enc_dim, depth=args.enc_depth, heads=4)
    N, P = vit.num_patches, args.patch
    recon_head = nn.Linear(args.enc_dim, P * P * 3)
    probe_head = nn.Linear(args.enc_dim, n_probe)
    enc_ckpt = os.path.join(args.work, "encoder.pt")
    enc_hist = []
    # wall-aware channels: value s_g * side * |y - door_y| (pixels), spread over WA channels, with s_g
    # chosen so that its share of the visual MSE is C x the proprio term's per squared pixel
    WA = 8
    p_std_px = float(np.mean(p_std))
    s_g = args.wall_aware * math.sqrt(64.0 / 10.0 * args.proprio_scale) / p_std_px

    def wall_target(st, lay):  # st [B,2] (x,y), lay [B,2] (wall_x, door_y) -> [B, WA]
        side = np.where(st[:, 0] < lay[:, 0], -1.0, 1.0)
        g = s_g * side * np.abs(st[:, 1] - lay[:, 1]) / math.sqrt(WA)
        return torch.from_numpy(np.repeat(g[:, None], WA, axis=1).astype(np.float32))

    if os.path.exists(enc_ckpt):
        ck = torch.load(enc_ckpt)
        vit.load_state_dict(ck["vit"]); enc_hist = ck["hist"]
        log("encoder: resumed finished checkpoint")
    else:
        if args.init_encoder:
            ck = torch.load(args.init_encoder)
            vit.load_state_dict(ck["vit"]); enc_hist = list(ck["hist"])
            if "recon_head" in ck:
                recon_head.load_state_dict(ck["recon_head"]); probe_head.load_state_dict(ck["probe_head"])
            log(f"encoder: fine-tuning from {args.init_encoder}")
        params = list(vit.parameters()) + list(recon_head.parameters()) + list(probe_head.parameters())
        opt = torch.optim.AdamW(params, lr=args.enc_lr, weight_decay=0.05)
        t0 = time.time()
        for step in range(args.enc_steps):
            for g in opt.param_groups:
                g["lr"] = cosine_lr(step, args.enc_steps, args.enc_lr)
            e = rng.choice(train_eps, args.batch); t = rng.integers(0, T + 1, args.batch)
            idx = np.lexsort((t, e))  # sorted reads from the memory map
            e, t = e[idx], t[idx]
            x = to_pixels(frames[e, t])
            tok = vit(x)
            # per-patch reconstruction target
            tgt = x.reshape(-1, 3, S // P, P, S // P, P).permute(0, 2, 4, 3, 5, 1).reshape(-1, N, P * P * 3)
            rec = F.mse_loss(recon_head(tok), tgt)
            st = torch.from_numpy((probe_src[e, t] - s_mean) / s_std).float()
            probe = F.mse_loss(probe_head(tok), st[:, None, :].expand(-1, N, n_probe))
            loss = rec + probe
            if args.keypoint_gain > 0:
                kp = F.mse_loss(tok[:, :, :n_probe], args.keypoint_gain * st[:, None, :].expand(-1, N, n_probe))
                loss = loss + kp
            wall = torch.zeros(())
            if args.wall_aware > 0:
                tgt_w = wall_target(states[e, t], layout[e])
                wall = F.mse_loss(tok[:, :, :WA], tgt_w[:, None, :].expand(-1, N, WA))
                loss = loss + wall
            opt.zero_grad(); loss.backward(); opt.step()
            if step % 200 == 0 or step == args.enc_steps - 1:
                enc_hist.append({"step": step, "recon": rec.item(), "probe": probe.item(), "wall_aware": wall.item()})
                log(f"enc step {step} recon {rec.item():.4f} probe {probe.item():.4f} wall {wall.item():.4f} ({(time.time()-t0)/(step+1)*1000:.0f} ms/step)")
        torch.save({"vit": vit.state_dict(), "hist": enc_hist, "recon_head": recon_head.state_dict(),
                    "probe_head": probe_head.state_dict()}, enc_ckpt)
    vit.eval()
    for p_ in vit.parameters():
        p_.requires_grad_(False)

    # ---------------- 2. latents ----------------
    lat_path = os.path.join(args.work, "latents.npy")
    if os.path.exists(lat_path):
        latents = np.load(lat_path)
    else:
        latents = np.zeros((E, T + 1, N, args.enc_dim), dtype=np.float32)
        with torch.no_grad():
            for e in range(E):
                latents[e] = vit(to_pixels(frames[e])).numpy()
        np.save(lat_path, latents)
        log("latents computed", latents.shape)

    # proprio encoder: a frozen, well-conditioned random projection (a trainable one can collapse
    # under the self-referential MSE target; the planner's proprio term relies on its scale)
    prop_enc = nn.Conv1d(PD, 10, 1)
    g = torch.Generator().manual_seed(args.seed + 17)
    q, _ = torch.linalg.qr(torch.randn(10, PD, generator=g))
    with torch.no_grad():
        prop_enc.weight.copy_((q * math.sqrt(args.proprio_scale))[:, :, None]); prop_enc.bias.zero_()
    for p_ in prop_enc.parameters():
        p_.requires_grad_(False)

    def prop_emb(pr):  # np [..., PD] raw -> torch [..., 10]
        x = torch.from_numpy(((pr - p_mean) / p_std).astype(np.float32))
        shp = x.shape
        return prop_enc(x.reshape(-1, PD, 1))[:, :, 0].reshape(*shp[:-1], 10)

    fs, H, R = args.frameskip, args.num_hist, args.rollout
    norm_actions = (actions - a_mean) / a_std

    def model_actions(e, t0, count):
        """[B] episodes, [B] start steps -> [B, count, A*fs] normalized model actions."""
        idx = t0[:, None] + np.arange(count * fs)[None, :]
        a = norm_actions[e[:, None], idx]  # [B, count*fs, A]
        return torch.from_numpy(a.reshape(len(e), count, fs * A).astype(np.float32))

    # ---------------- 3. predictor ----------------
    pred = Predictor(N, args.enc_dim, H, depth=args.pred_depth, heads=args.pred_heads, dim_head=args.pred_dim_head,
                     mlp_dim=args.pred_mlp, emb_dim=10, action_in=A * fs)
    pred_ckpt = os.path.join(args.work, "predictor.pt")
    opt = torch.optim.AdamW(pred.parameters(), lr=args.lr, weight_decay=0.01)
    start, pred_hist = 0, []
    if os.path.exists(pred_ckpt):
        ck = torch.load(pred_ckpt)
        pred.load_state_dict(ck["pred"]); opt.load_state_dict(ck["opt"]); start = ck["step"]; pred_hist = ck["hist"]
        log(f"predictor: resumed at step {start}")
    elif args.init_predictor:
        pred.load_state_dict(torch.load(args.init_predictor)["pred"])
        log(f"predictor: fine-tuning from {args.init_predictor}")
    L = H + R  # frames per sample
    span = (L - 1) * fs
    t0 = time.time()
    for step in range(start, args.pred_steps):
        for g_ in opt.param_groups:
            g_["lr"] = cosine_lr(step, args.pred_steps, args.lr)
        e = rng.choice(train_eps, args.batch); ts = rng.integers(0, T - span + 1, args.batch)
        fidx = ts[:, None] + fs * np.arange(L)[None, :]
        vis = torch.from_numpy(latents[e[:, None], fidx])  # [B,L,N,D]
        pe = prop_emb(proprio[e[:, None], fidx])  # [B,L,10]
        act = model_actions(e, ts, L - 1)  # [B,L-1,A]
        # teacher forced: every window of H frames predicts the next
        tf = 0.0
        for k in range(R):
            v_hat, p_hat = pred(vis[:, k:k + H], pe[:, k:k + H], act[:, k:k + H])
            tf = tf + F.mse_loss(v_hat, vis[:, k + H]) + F.mse_loss(p_hat, pe[:, k + H])
        tf = tf / R
        # autoregressive rollout from the first H frames
        hv, hp = list(vis[:, :H].unbind(1)), list(pe[:, :H].unbind(1))
        ro = 0.0
        for k in range(R):
            v_hat, p_hat = pred(torch.stack(hv[-H:], 1), torch.stack(hp[-H:], 1), act[:, k:k + H])
            ro = ro + F.mse_loss(v_hat, vis[:, k + H]) + F.mse_loss(p_hat, pe[:, k + H])
            hv.append(v_hat); hp.append(p_hat)
        ro = ro / R
        loss = tf + ro
        opt.zero_grad(); loss.backward()
        torch.nn.utils.clip_grad_norm_(pred.parameters(), 1.0)
        opt.step()
        if step % 200 == 0 or step == args.pred_steps - 1:
            pred_hist.append({"step": step, "teacher_forced": tf.item(), "rollout": ro.item()})
            log(f"pred step {step} tf {tf.item():.5f} rollout {ro.item():.5f} ({(time.time()-t0)/(step-start+1)*1000:.0f} ms/step)")
        if (step + 1) % 1000 == 0 or step == args.pred_steps - 1:
            torch.save({"pred": pred.state_dict(), "opt": opt.state_dict(), "step": step + 1, "hist": pred_hist}, pred_ckpt + ".tmp")
            os.replace(pred_ckpt + ".tmp", pred_ckpt)
    pred.eval()

    # ---------------- 4. evaluation without a planner ----------------
    ev = {}
    with torch.no_grad():
        k_steps = 5
        e = np.repeat(val_eps, 4); ts = rng.integers(0, T - k_steps * fs + 1, len(e))
        fidx = ts[:, None] + fs * np.arange(k_steps + 1)[None, :]
        vis = torch.from_numpy(latents[e[:, None], fidx]); pe = prop_emb(proprio[e[:, None], fidx])
        act = model_actions(e, ts, k_steps)
        v, p = vis[:, 0:1], pe[:, 0:1]
        W = prop_enc.weight[:, :, 0]  # [10,PD]
        pinv = torch.linalg.pinv(W)
        per_step = []
        for k in range(k_steps):
            v_hat, p_hat = pred(v[:, -H:], p[:, -H:], act[:, max(0, k + 1 - H):k + 1])
            v = torch.cat([v, v_hat[:, None]], 1); p = torch.cat([p, p_hat[:, None]], 1)
            mse = F.mse_loss(v_hat, vis[:, k + 1]).item()
            still = F.mse_loss(vis[:, 0], vis[:, k + 1]).item()
            pos_hat = (p_hat @ pinv.T).numpy() * p_std + p_mean
            pos_err = np.linalg.norm((pos_hat - proprio[e, fidx[:, k + 1]])[:, :2], axis=1)
            per_step.append({"step": k + 1, "latent_mse": mse, "nothing_moves_mse": still,
                             "proprio_px_err_mean": float(pos_err.mean()), "proprio_px_err_p90": float(np.percentile(pos_err, 90))})
        ev["open_loop"] = per_step
        # latent distance vs true distance for random state pairs in the same layout (held-out episodes)
        pairs_e = rng.choice(val_eps, 2000); t1 = rng.integers(0, T + 1, 2000); t2 = rng.integers(0, T + 1, 2000)
        lat_d = ((latents[pairs_e, t1] - latents[pairs_e, t2]) ** 2).mean(axis=(1, 2))
        nd = min(4, states.shape[-1])  # positions (PushT: agent and block)
        true_d = np.linalg.norm(states[pairs_e, t1, :nd] - states[pairs_e, t2, :nd], axis=1)
        far = true_d > np.percentile(true_d, 25)
        ev["spearman_latent_vs_true_distance"] = spearman(lat_d, true_d)
        ev["spearman_far_pairs"] = spearman(lat_d[far], true_d[far])
        ev["pairs"] = int(len(true_d))
    log("eval", json.dumps(ev, indent=1))

    # ---------------- 5. export ----------------
    obs_enc = ObservationEncoder(vit, prop_enc).eval()
    e = val_eps[np.arange(4) % len(val_eps)]; t = np.array([0, 10, 20, 30]) % (T + 1)
    fixture = {"pixels": to_pixels(frames[e, t]),
               "proprio": torch.from_numpy(((proprio[e, t] - p_mean) / p_std).astype(np.float32)),
               "action": model_actions(e, np.minimum(t, T - fs * H), H)}
    training = {
        "seed": args.seed,
        "dataset": {"episodes": E, "steps": T, "seed": meta["seed"], "held_out_episodes": int(n_val)},
        "encoder": {"dim": args.enc_dim, "depth": args.enc_depth, "heads": 4, "patch": args.patch, "steps": args.enc_steps,
                    "objective": "per-patch pixel reconstruction + per-token state probe"
                                 + (f" + wall-aware channels (C {args.wall_aware}, {WA} channels, s_g {s_g:.4f})" if args.wall_aware > 0 else "")
                                 + (f" + keypoint channels (first {n_probe} channels = {args.keypoint_gain} x standardized probe)" if args.keypoint_gain > 0 else ""),
                    "init": args.init_encoder, "final": enc_hist[-1] if enc_hist else None},
        "proprio_encoder": f"frozen random projection (orthonormal columns x sqrt({args.proprio_scale}))",
        "predictor": {"dim": args.enc_dim + 20, "depth": args.pred_depth, "heads": args.pred_heads, "dim_head": args.pred_dim_head,
                      "mlp": args.pred_mlp, "steps": args.pred_steps, "batch": args.batch, "rollout": R, "lr": args.lr,
                      "init": args.init_predictor,
                      "final": pred_hist[-1] if pred_hist else None},
        "eval": ev,
    }
    bound = ACTION_BOUND[env]  # Wall: the reference env's max step norm; PointMaze / PushT: [-1, 1]
    parity = export_bundle(obs_enc, pred, args.out, name=os.path.basename(os.path.normpath(args.out)), env=env,
                           image_size=S, num_patches=N,
                           visual_dim=args.enc_dim, num_hist=H, frameskip=fs, action_dim=A, proprio_dim=PD,
                           action_mean=a_mean, action_std=a_std, proprio_mean=p_mean, proprio_std=p_std,
                           fixture_inputs=fixture, training=training, alpha=alpha,
                           action_low=[-bound] * A, action_high=[bound] * A)
    log("onnxruntime vs torch max abs diff", parity)
    json.dump({"encoder_curve": enc_hist, "predictor_curve": pred_hist, "eval": ev, "onnx_parity_max_abs": parity},
              open(os.path.join(args.out, "training.json"), "w"), indent=1)
    log("wrote bundle to", args.out)


if __name__ == "__main__":
    main()
