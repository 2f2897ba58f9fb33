"""The comparison: every method on the same tasks, a resumable grid runner, tables and plots."""

from .methods import CellContext, Method, MethodOutput, make_method
from .runner import BenchConfig, BenchConfigError, load_config, parse_config, run_bench

__all__ = [
    "BenchConfig", "BenchConfigError", "CellContext", "Method", "MethodOutput", "load_config", "make_method",
    "parse_config", "run_bench",
]
