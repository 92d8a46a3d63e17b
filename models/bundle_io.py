"""Write a qwm bundle (encoder.onnx, predictor.onnx, manifest.json, parity fixtures) from PyTorch modules."""
import hashlib, json, os
import numpy as np
import torch

FORMAT_VERSION = 1


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def export_bundle(obs_enc, pred, out, *, name, env, image_size, num_patches, visual_dim, num_hist, frameskip,
                  action_dim, proprio_dim, action_mean, action_std, proprio_mean, proprio_std, fixture_inputs,
                  training=None, alpha=1.0, action_low=None, action_high=None, proprio_emb_dim=10,
                  proprio_tokens=1, extra_fixtures=None):
    """Export both graphs (opset 17, single files, dynamic batch), parity fixtures and the manifest.

    fixture_inputs: dict with pixels [B,3,S,S], proprio [B,P] (normalized) and action [B,H,A*fs] tensors.
    proprio_tokens: 1 (one proprio embedding per frame) or num_patches (DINO-WM's per-token proprio
    channels, flattened token-major: the proprio_emb tensors are [.., proprio_tokens * proprio_emb_dim]).
    extra_fixtures: more named arrays to save under fixtures/ (e.g. a rollout reference).
    Returns the max abs difference between onnxruntime and PyTorch per output.
    """
    os.makedirs(out, exist_ok=True)
    obs_enc.eval(); pred.eval()
    S, N, D, H, E = image_size, num_patches, visual_dim, num_hist, proprio_emb_dim * proprio_tokens
    A = action_dim * frameskip
    enc_path, pred_path = os.path.join(out, "encoder.onnx"), os.path.join(out, "predictor.onnx")
    torch.onnx.export(obs_enc, (torch.zeros(2, 3, S, S), torch.zeros(2, proprio_dim)), enc_path, dynamo=False,
                      opset_version=17, input_names=["pixels", "proprio"], output_names=["visual", "proprio_emb"],
                      dynamic_axes={k: {0: "batch"} for k in ["pixels", "proprio", "visual", "proprio_emb"]})
    torch.onnx.export(pred, (torch.zeros(2, H, N, D), torch.zeros(2, H, E), torch.zeros(2, H, A)), pred_path,
                      dynamo=False, opset_version=17, input_names=["visual", "proprio_emb", "action"],
                      output_names=["next_visual", "next_proprio_emb"],
                      dynamic_axes={k: {0: "batch"} for k in ["visual", "proprio_emb", "action", "next_visual", "next_proprio_emb"]})
    fx = os.path.join(out, "fixtures"); os.makedirs(fx, exist_ok=True)
    with torch.no_grad():
        pix, pr, act = fixture_inputs["pixels"], fixture_inputs["proprio"], fixture_inputs["action"]
        vis_o, pe_o = obs_enc(pix, pr)
        # predictor history: frames built from the encoded fixture frames, rolled so each slot differs
        vis_h = torch.stack([vis_o.roll(k, 0) for k in range(H)][::-1], 1).contiguous()
        pe_h = torch.stack([pe_o.roll(k, 0) for k in range(H)][::-1], 1).contiguous()
        nv, npe = pred(vis_h, pe_h, act)
    fixtures = {"encoder_pixels": pix, "encoder_proprio": pr, "encoder_visual": vis_o, "encoder_proprio_emb": pe_o,
                "predictor_visual": vis_h, "predictor_proprio_emb": pe_h, "predictor_action": act,
                "predictor_next_visual": nv, "predictor_next_proprio_emb": npe}
    fixtures.update(extra_fixtures or {})
    for k, v in fixtures.items():
        v = v.numpy() if torch.is_tensor(v) else np.asarray(v)
        np.save(os.path.join(fx, k + ".npy"), v.astype(np.float32))
    import onnxruntime as ort
    so = ort.SessionOptions(); so.intra_op_num_threads = 1
    o1 = ort.InferenceSession(enc_path, so).run(None, {"pixels": pix.numpy(), "proprio": pr.numpy()})
    o2 = ort.InferenceSession(pred_path, so).run(None, {"visual": vis_h.numpy(), "proprio_emb": pe_h.numpy(), "action": act.numpy()})
    parity = {"encoder_visual": float(np.abs(o1[0] - vis_o.numpy()).max()),
              "encoder_proprio_emb": float(np.abs(o1[1] - pe_o.numpy()).max()),
              "predictor_next_visual": float(np.abs(o2[0] - nv.numpy()).max()),
              "predictor_next_proprio_emb": float(np.abs(o2[1] - npe.numpy()).max())}

    def io(items):
        return [{"name": n, "shape": s} for n, s in items]

    manifest = {
        "format_version": FORMAT_VERSION, "name": name, "env": env, "image_size": S,
        "pixel_mean": [0.5, 0.5, 0.5], "pixel_std": [0.5, 0.5, 0.5],
        "action_dim": action_dim, "frameskip": frameskip,
        "action_mean": [float(v) for v in action_mean], "action_std": [float(v) for v in action_std],
        **({"action_low": [float(v) for v in action_low], "action_high": [float(v) for v in action_high]}
           if action_low is not None else {}),
        "proprio_dim": proprio_dim,
        "proprio_mean": [float(v) for v in proprio_mean], "proprio_std": [float(v) for v in proprio_std],
        "num_hist": H, "num_patches": N, "visual_dim": D, "proprio_emb_dim": proprio_emb_dim,
        **({"proprio_tokens": proprio_tokens} if proprio_tokens != 1 else {}),
        "objective": {"mode": "last", "alpha": alpha},
        "graphs": {
            "encoder": {"file": "encoder.onnx", "sha256": sha256(enc_path), "bytes": os.path.getsize(enc_path),
                        "inputs": io([("pixels", [-1, 3, S, S]), ("proprio", [-1, proprio_dim])]),
                        "outputs": io([("visual", [-1, N, D]), ("proprio_emb", [-1, E])])},
            "predictor": {"file": "predictor.onnx", "sha256": sha256(pred_path), "bytes": os.path.getsize(pred_path),
                          "inputs": io([("visual", [-1, H, N, D]), ("proprio_emb", [-1, H, E]), ("action", [-1, H, A])]),
                          "outputs": io([("next_visual", [-1, N, D]), ("next_proprio_emb", [-1, E])])},
        },
        "quantization": {"encoder": {"scheme": "float"}, "predictor": {"scheme": "float"}},
        "training": training or {},
    }
    with open(os.path.join(out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=2)
    return parity
