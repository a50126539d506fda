"""Prompt templates and example banks as data files, plus the one loader that reads them."""

from prompts.loader import PROMPTS_DIR, list_prompt_files, load_task

__all__ = ["PROMPTS_DIR", "list_prompt_files", "load_task"]
