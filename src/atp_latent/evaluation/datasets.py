"""Evaluation datasets (GSM8K, GSM-Hard, SVAMP, MultiArith, GSM8k-Aug) by name, resolved in a data directory (option, else $ATP_DATA, else ../shared/data), and
Hugging Face datasets written `hf:NAME[:SPLIT]` (with the optional `datasets` package: the `hf` extra)."""

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


HF_PREFIX = "hf:"


def require_datasets(spec: str) -> None:
    """A one-line DataError saying how to install `datasets` when an `hf:` spec needs it and it is missing."""
    try:
        import datasets  # noqa: F401 -- optional dependency, only checked here
    except ImportError:
        from atp_latent.data.records import DataError

        raise DataError(spec, None, "datasets", "reading a Hugging Face dataset needs the 'datasets' package, "
                        "not installed here: pip install 'atp-latent[hf]' (or pip install datasets)") from None


def resolve_data(spec: str, data_dir: str | Path | None = None) -> tuple[str, Path]:
    """A file path, or a benchmark name -> (display name, path). Raises FileNotFoundError naming the file.
    An `hf:` spec has no path (see load_named); without `datasets` installed the error says how to get it."""
    if spec.startswith(HF_PREFIX):
        require_datasets(spec)
        raise ValueError(f"{spec}: a Hugging Face dataset has no local file; load it with load_data or load_named")
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

    if spec.startswith(HF_PREFIX):
        require_datasets(spec)
        name, _, hf_split = spec[len(HF_PREFIX):].partition(":")
        return load_hf_dataset(name, hf_split or split)
    return load_records(resolve_data(spec, data_dir)[1])


def load_named(spec: str, data_dir: str | Path | None = None, split: str = "test"):
    """(display name, records) for a file, a benchmark name or `hf:NAME[:SPLIT]` (`split` when none is given)."""
    if spec.startswith(HF_PREFIX):
        name, _, hf_split = spec[len(HF_PREFIX):].partition(":")
        return f"{name}:{hf_split or split}", load_data(spec, data_dir, split)
    name, path = resolve_data(spec, data_dir)
    from atp_latent.data.formats import load_records

    return name, load_records(path)
