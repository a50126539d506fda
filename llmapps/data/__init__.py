"""Training data that grows: augmentation of an app's train split (``augment``), the text surgery
it shares with the counterfactual audit (``swaps``), and ``llmapps data augment`` (``cli``)."""
