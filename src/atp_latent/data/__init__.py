"""Data layer: problem records, file formats and loaders, and the synthetic benchmark."""

from .formats import (
    FORMATS,
    FileReport,
    StepStats,
    check_file,
    check_files,
    detect_format,
    load_hf_dataset,
    load_records,
    write_jsonl,
)
from .records import DataError, Problem, evaluate_expression, parse_equation, parse_number
from .synthetic import SPLITS, SynthConfig, generate_benchmark, valid_orders, write_benchmark

__all__ = [
    "FORMATS",
    "SPLITS",
    "DataError",
    "FileReport",
    "Problem",
    "StepStats",
    "SynthConfig",
    "check_file",
    "check_files",
    "detect_format",
    "evaluate_expression",
    "generate_benchmark",
    "load_hf_dataset",
    "load_records",
    "parse_equation",
    "parse_number",
    "valid_orders",
    "write_benchmark",
    "write_jsonl",
]
