"""LoRA on the reasoner's language model, through `peft` (CODI and CoLaR train LoRA r128 / alpha 32 upstream).

The adapters are injected into the Hugging Face model in place (`peft.inject_adapter_in_model`), so the model keeps
its class and its `base_model` backbone, which the latent engine calls directly. A checkpoint keeps the base
weights under their usual names (`lm/`, loadable by `from_pretrained` alone) and the adapters beside them in
peft's format (`lm_adapter/adapter_config.json`, `adapter_model.safetensors`); loading injects and fills them.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

ADAPTER_DIR = "lm_adapter"


def lora_config(r: int, alpha: float, dropout: float, target_modules, fan_in_fan_out: bool = False):
    from peft import LoraConfig

    return LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules, bias="none",
                      fan_in_fan_out=fan_in_fan_out)


def add_lora(lm, r: int, alpha: float, dropout: float = 0.0, target_modules="all-linear") -> None:
    """Inject LoRA adapters into `lm` and freeze its own weights (the adapters train). Raises a one-line ValueError
    when no module of `lm` matches `target_modules`."""
    from peft import inject_adapter_in_model

    if has_lora(lm):
        raise ValueError("the language model already has LoRA adapters")
    from transformers.pytorch_utils import Conv1D

    transposed = any(isinstance(m, Conv1D) for m in lm.modules())  # GPT-2 stores its linear weights (in, out)
    try:
        inject_adapter_in_model(lora_config(r, alpha, dropout, target_modules, transposed), lm)
    except ValueError as e:
        names = sorted({n.split(".")[-1] for n, m in lm.named_modules() if isinstance(m, (torch.nn.Linear, Conv1D))})
        raise ValueError(f"model.lora_target_modules {target_modules!r} matches no module of "
                         f"{type(lm).__name__} (its linear layers: {', '.join(names) or 'none'}): "
                         f"{str(e).splitlines()[0]}") from None
    for name, p in lm.named_parameters():
        p.requires_grad_("lora_" in name)


def has_lora(lm) -> bool:
    return bool(getattr(lm, "peft_config", None))


def base_state_dict(lm) -> dict[str, torch.Tensor]:
    """`lm`'s own weights under the names the model class loads (adapters left out, `.base_layer` taken out)."""
    return {k.replace(".base_layer.", "."): v for k, v in lm.state_dict().items() if "lora_" not in k}


def save_adapter(lm, path: Path) -> None:
    from peft import get_peft_model_state_dict

    path.mkdir(parents=True, exist_ok=True)
    cfg = lm.peft_config["default"]
    (path / "adapter_config.json").write_text(json.dumps({
        "r": cfg.r, "lora_alpha": cfg.lora_alpha, "lora_dropout": cfg.lora_dropout,
        "target_modules": sorted(cfg.target_modules) if isinstance(cfg.target_modules, set) else cfg.target_modules,
    }, indent=2))
    save_file({k: v.contiguous() for k, v in get_peft_model_state_dict(lm).items()},
              str(path / "adapter_model.safetensors"))


def load_adapter(lm, path: Path) -> None:
    """Inject the adapters saved at `path` into `lm` (its base weights already loaded) and fill them."""
    from peft import set_peft_model_state_dict

    cfg = json.loads((path / "adapter_config.json").read_text())
    add_lora(lm, cfg["r"], cfg["lora_alpha"], cfg["lora_dropout"], cfg["target_modules"])
    state = load_file(str(path / "adapter_model.safetensors"))
    result = set_peft_model_state_dict(lm, state)
    missing = [k for k in getattr(result, "unexpected_keys", []) if "lora_" in k]
    if missing:
        raise ValueError(f"{path}: adapter weights that match no module: {', '.join(missing[:3])}")


# ----- a reasoner's parts (the LM, and a separate step decoder beside it) -----
DECODER_ADAPTER_DIR = "decoder_adapter"


def save_part(lm, path: Path, adapter_path: Path) -> None:
    """`lm.save_pretrained(path)`; with adapters, its base weights there under their own names and the adapters at
    `adapter_path` (peft's format)."""
    if has_lora(lm):
        lm.save_pretrained(path, state_dict=base_state_dict(lm))
        save_adapter(lm, adapter_path)
    else:
        lm.save_pretrained(path)


def load_part_adapter(lm, adapter_path: Path) -> None:
    """The adapters saved beside a part, if any (a checkpoint written without LoRA has none)."""
    if (adapter_path / "adapter_config.json").is_file():
        load_adapter(lm, adapter_path)


def add_lora_to_reasoner(model, r: int | None, alpha: float, dropout: float = 0.0, target_modules="all-linear",
                         source: str = "the model") -> None:
    """model.lora_*: adapters on the parts of the reasoner that train, its LM and its separate step decoder (a frozen
    part, e.g. method.decoder_trainable=false or RL's decoder, gets none); the heads stay fully trainable. A part
    that already has adapters (loaded from `source`, a LoRA checkpoint) keeps them and trains them on whatever r is;
    a set r must match theirs (one-line ValueError)."""
    parts = [m for m in (model.lm, model.decoder) if m is not None and any(p.requires_grad for p in m.parameters())]
    for part in parts:
        if has_lora(part):
            have = part.peft_config["default"]
            if r is not None and (have.r, float(have.lora_alpha)) != (r, float(alpha)):
                raise ValueError(f"{source} has LoRA adapters with r={have.r}, alpha={have.lora_alpha:g}, not "
                                 f"model.lora_r={r}, model.lora_alpha={alpha:g}: set those (or leave lora_r null) "
                                 f"to train them on")
        elif r is not None:
            add_lora(part, r, alpha, dropout, target_modules)
