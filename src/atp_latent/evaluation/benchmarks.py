"""Real benchmarks by name, resolved in a data directory (option, else $ATP_DATA, else ../shared/data)."""

from __future__ import annotations

import os
from pathlib import Path

BENCHMARKS = {
    "gsm8k": "gsm8k_test.jsonl",
    "gsm-hard": "gsm_hard.jsonl",
    "svamp": "svamp.jsonl",
    "multiarith": "multiarith.jsonl",
    "gsm8k-aug": "gsm8k_aug_test.jsonl",
    "gsm8k-aug-valid": "gsm8k_aug_valid.jsonl",
    "gsm8k-train": "gsm8k_train.jsonl",
}


def default_data_dir() -> Path:
    return Path(os.environ.get("ATP_DATA") or Path.cwd().parent / "shared" / "data")


def resolve_data(spec: str, data_dir: str | Path | None = None) -> tuple[str, Path]:
    """A file path, or a benchmark name -> (display name, path). Raises FileNotFoundError naming the file."""
    p = Path(spec)
    if p.suffix in (".jsonl", ".json", ".txt") or p.exists():
        return p.stem, p
    if spec in BENCHMARKS:
        base = Path(data_dir) if data_dir else default_data_dir()
        path = base / BENCHMARKS[spec]
        if not path.is_file():
            raise FileNotFoundError(f"{path}: benchmark '{spec}' not found (set --data-dir or $ATP_DATA)")
        return spec, path
    raise FileNotFoundError(f"{spec}: no such file, and not a benchmark name (known: {', '.join(BENCHMARKS)})")


def load_data(spec: str, data_dir: str | Path | None = None, split: str = "train"):
    """Records from a file, a benchmark name, or a Hugging Face dataset written `hf:NAME[:SPLIT]`."""
    from atp_latent.data.formats import load_hf_dataset, load_records

    if spec.startswith("hf:"):
        name, _, hf_split = spec[3:].partition(":")
        return load_hf_dataset(name, hf_split or split)
    return load_records(resolve_data(spec, data_dir)[1])
