"""Training data that grows: augmentation of an app's train split (``augment``), the text surgery
it shares with the counterfactual audit (``swaps``), an app's train rows and fields (``rows``); the
``llmapps data augment`` command reads its flags and calls them."""
