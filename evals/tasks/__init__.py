"""Offline lm-eval tasks built from the package's own corpus (loaded through lm-eval's
``include_path``; `local_data.py` provides their documents)."""
