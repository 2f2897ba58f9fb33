"""Task examples, prompt templates, tokenization, and the paper's four datasets."""

from .core import (
    DATA_ENV, TEMPLATES, DataError, EncodedExample, Example, PromptTemplate, collate, draw_demonstrations, encode_all,
    encode_example, encode_prompt, find_data_dir, get_template, group_by_input, load_table, split_by_input, targets_of,
)
from .tasks import (
    TASKS, Task, adidas_paper_splits, commongen_paper_splits, e2e_paper_splits, load_adidas, load_commongen, load_e2e,
    load_e2e_cleaned, load_task, load_webnlg_entries, webnlg_paper_splits,
)

__all__ = [
    "DATA_ENV", "TASKS", "TEMPLATES", "DataError", "EncodedExample", "Example", "PromptTemplate", "Task",
    "adidas_paper_splits", "collate", "commongen_paper_splits", "draw_demonstrations", "e2e_paper_splits", "encode_all", "encode_example",
    "encode_prompt", "find_data_dir", "get_template", "group_by_input", "load_adidas", "load_commongen", "load_e2e",
    "load_e2e_cleaned", "load_table", "load_task", "load_webnlg_entries", "split_by_input", "targets_of",
    "webnlg_paper_splits",
]
