"""Release: splits, the Hugging Face dataset, and its data card."""
