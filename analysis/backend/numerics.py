"""What this processor's kernels promise about numbers: measured, never assumed.

Stopline's *decisions* are exact by construction: the live controller and the replay run the same policy
code on the same values (``analysis.production.verify`` checks it on every run). The *values* (a probe's trial answer,
its probabilities, the after-cue entropy) come from the model's kernels, and whether a row's numbers depend
on its batch-mates is a property of those kernels, not of our code:

- torch on an AVX2-only x86 CPU multiplies bf16 matrices with ATen's own kernels, where each output row is
  a dot product of its own (bit for bit the same in a batch of 2 or 16; a one-row product takes a
  matrix-vector kernel and rounds differently);
- on a CPU with AVX-512 (and AMX-BF16 on newer Xeons) torch hands bf16 products to oneDNN, which picks its
  blocking, and so its order of summation, by the shape: the same row rounds differently in a batch of 2
  and of 6;
- a GPU server batches by load (vLLM says the same of its own batching), so its rows differ by batch too.

``batch_invariance`` measures the property directly on this machine's kernels (a few products of the
shapes a small model uses); tests that compare numbers across batch shapes bit for bit ask it first and
skip, naming the processor's features, where it does not hold. ``cpu_features`` says what the run was on.

Attention has a second such property: whether a query's result depends on key columns that are masked out.
Exactly, a masked column adds nothing (its weight is 0), but torch's CPU attention (the fused kernel and the
math path alike, fp32 and bf16, measured on AVX-512 and with ATen's AVX2 kernels forced:
``ATEN_CPU_CAPABILITY=avx2``, oneDNN off) sums the softmax and the
weighted values in vector lanes and blocks laid over the key axis, so extra masked columns before a key move
it to another lane and change the rounding (fp32 ~1e-7, bf16 up to its last place). Batched probes
(``decode.generate_batch`` with ``defer``) attend over such columns: a deferred probe masks what its row
generated since its checkpoint, and drafted and guessed answer tokens that were rejected stay in the cache,
masked; the live controller probes at once over none. ``padding_invariance`` measures it; ``exact_replay``
says whether live values can be expected to equal a recorded run's bit for bit on this machine.
"""
from __future__ import annotations

import os
import re
from functools import lru_cache
from pathlib import Path

# CPU flags that decide which kernels torch (ATen, oneDNN) picks for bf16 and fp32 products
_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_bf16", "avx512_fp16",
          "avx512_vnni", "amx_tile", "amx_bf16", "amx_int8")
ISA_ENV = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")


def _cpuinfo() -> tuple[str, set[str]]:
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return "", set()
    model = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
    flags = re.search(r"^(?:flags|Features)\s*:\s*(.+)$", text, re.M)
    return (model.group(1).strip() if model else ""), set(flags.group(1).split() if flags else ())


def cpu_features() -> dict:
    """The processor, the ISA flags that choose kernels, what torch dispatches to, and any ISA overrides."""
    import torch
    model, flags = _cpuinfo()
    try:
        mkldnn_bf16 = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        mkldnn_bf16 = False
    return {
        "cpu": model,
        "isa_flags": [f for f in _FLAGS if f in flags],
        "aten_capability": torch.backends.cpu.get_cpu_capability(),
        "onednn_bf16": mkldnn_bf16 and torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled,
        "overrides": {k: os.environ[k] for k in ISA_ENV if k in os.environ},
        "torch": torch.__version__,
    }


@lru_cache(maxsize=None)
def batch_invariance(dtype_name: str = "bfloat16", hidden: int = 576, out: int = 1536, rows: int = 6) -> dict:
    """Do this machine's matrix products give a row the same bits in a batch of ``rows`` and in smaller
    batches of two or more (one token per row, as in a decode step, and 16 tokens per row, as in a cue
    pass)? Returns ``{"invariant": bool, "why": str}``; ``why`` names the first shape that differs.
    The default sizes are SmolLM2-135M's (hidden 576, MLP 1536)."""
    import torch
    dtype = getattr(torch, dtype_name)
    g = torch.Generator().manual_seed(0)
    w = (torch.randn(out, hidden, generator=g) / hidden ** 0.5).to(dtype)
    with torch.no_grad():
        for tokens in (1, 16):
            x = torch.randn(rows, tokens, hidden, generator=g).to(dtype)
            full = torch.nn.functional.linear(x, w)
            for sub in ([1, 3], [0, 2, 4], list(range(1, rows))):
                part = torch.nn.functional.linear(x[sub], w)
                if not torch.equal(part, full[sub]):
                    diff = (part.float() - full[sub].float()).abs().max().item()
                    return {"invariant": False,
                            "why": f"a {dtype_name} product of {len(sub)} of {rows} rows x {tokens} tokens "
                                   f"({hidden}->{out}) differs from the same rows in the full batch by up to {diff:.3g}"}
    return {"invariant": True, "why": f"{dtype_name} products of {rows} rows equal their subsets' bit for bit"}


@lru_cache(maxsize=None)
def padding_invariance(dtype_name: str = "bfloat16", heads: int = 9, head_dim: int = 64, keys: int = 48) -> dict:
    """Does this machine's attention (``scaled_dot_product_attention`` under a boolean mask) give a query the
    same bits when masked-out key columns are added before its keys (left padding) or among them (a masked
    gap: a deferred probe's masked tail, rejected draft tokens), for one query token (a decode or answer step)
    and 16 (a cue pass)? Returns ``{"invariant": bool, "why": str}``, ``why`` naming the first case that
    differs. The default sizes are SmolLM2-135M's (9 heads of 64); a few milliseconds."""
    import torch
    F = torch.nn.functional
    dtype = getattr(torch, dtype_name)
    g = torch.Generator().manual_seed(0)
    k, v = (torch.randn(2, heads, keys, head_dim, generator=g).to(dtype) for _ in range(2))
    with torch.no_grad():
        for q_len in (1, 16):
            q = torch.randn(2, heads, q_len, head_dim, generator=g).to(dtype)
            ref = F.scaled_dot_product_attention(q, k, v, attn_mask=torch.ones(2, 1, q_len, keys, dtype=torch.bool))
            for where, at in (("of left padding", 0), ("masked among the keys", keys - q_len - 1)):
                for extra in (3, 8):
                    junk = torch.randn(2, heads, extra, head_dim, generator=g).to(dtype)
                    kk, vv = (torch.cat([t[:, :, :at], junk, t[:, :, at:]], 2) for t in (k, v))
                    m = torch.ones(2, 1, q_len, keys + extra, dtype=torch.bool)
                    m[..., at:at + extra] = False
                    out = F.scaled_dot_product_attention(q, kk, vv, attn_mask=m)
                    if not torch.equal(out, ref):
                        diff = (out.float() - ref.float()).abs().max().item()
                        return {"invariant": False,
                                "why": f"{dtype_name} attention of {q_len} query token(s) over {keys} keys differs "
                                       f"with {extra} columns {where} by up to {diff:.3g}"}
    return {"invariant": True, "why": f"{dtype_name} attention equals itself bit for bit with masked columns added"}


def exact_replay(dtype_name: str = "bfloat16", run_probes: str = "immediate") -> dict:
    """Can a live re-run (the controller probes each checkpoint at once) expect the recorded run's values bit
    for bit on this machine? Only where a row's products do not depend on its batch-mates (stopped rows leave
    the batch) and, for a run whose probes were batched, where masked key columns change nothing (its probes
    attended over masked columns that the live probes do not have). Returns ``{"expected": bool, "why": str}``.
    (The same batch size is assumed: ``verify`` says when it is not.)"""
    inv = batch_invariance(dtype_name)
    if not inv["invariant"]:
        return {"expected": False, "why": f"a row's numbers depend on its batch-mates: {inv['why']}"}
    if run_probes == "batched":
        pad = padding_invariance(dtype_name)
        if not pad["invariant"]:
            return {"expected": False,
                    "why": "the run's probes were batched: they attended over masked key columns (a deferred probe's "
                           "tail, rejected draft and guessed tokens) that the live probes do not have, and "
                           f"{pad['why']}"}
    how = "masked key columns change no attention result" if run_probes == "batched" else \
        "the run probed each checkpoint at once, as the live controller does"
    return {"expected": True, "why": f"{inv['why']}; {how}"}


def describe() -> str:
    """One line for logs and CI: the processor, its kernel-choosing flags, and what torch dispatches to."""
    f = cpu_features()
    inv, pad = batch_invariance(), padding_invariance()
    over = " ".join(f"{k}={v}" for k, v in f["overrides"].items())
    return (f"cpu: {f['cpu'] or 'unknown'}; flags: {' '.join(f['isa_flags']) or 'none'}; "
            f"aten: {f['aten_capability']}; onednn bf16: {'yes' if f['onednn_bf16'] else 'no'}"
            f"{'; ' + over if over else ''}; bf16 batch-invariant: {'yes' if inv['invariant'] else 'no'}"
            f"; bf16 attention padding-invariant: {'yes' if pad['invariant'] else 'no'}")


if __name__ == "__main__":
    print(describe())
