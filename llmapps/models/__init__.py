"""Model layer: local Hugging Face causal LMs (completion and chat) and the built-in tiny models."""
