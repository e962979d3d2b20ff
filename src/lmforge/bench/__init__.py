"""Benchmarks against HF transformers: the harness (``harness``) and the cases (``cases``)."""

from lmforge.bench.harness import CaseResult, format_table, run_case, system_info, write_report

__all__ = ["CaseResult", "format_table", "run_case", "system_info", "write_report"]
