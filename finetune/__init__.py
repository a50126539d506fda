"""The training side of the ``lora`` strategy: recipes, dataset formatting, PEFT training, merge.

``llmapps finetune lora --recipe tiny`` trains an adapter folder (PEFT files + manifest) that
``load_chain("news-riddle", strategy="lora", adapter=DIR)`` uses. Python::

    from finetune import load_recipe, train
    result = train(load_recipe("tiny"), "adapters/news-riddle-tiny")

Heavy libraries (torch, transformers, peft) load only when training starts.
"""

from __future__ import annotations

from finetune.recipe import Recipe, list_recipes, load_recipe

__all__ = ["Recipe", "list_recipes", "load_recipe", "merge_adapter", "train"]


def __getattr__(name: str) -> object:  # lazy: `import finetune` must not import torch
    if name == "train":
        from finetune.train import train

        return train
    if name == "merge_adapter":
        from finetune.merge import merge_adapter

        return merge_adapter
    raise AttributeError(name)
