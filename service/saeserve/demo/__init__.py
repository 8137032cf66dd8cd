"""The built-in demo: a small GPT-2 trained here on English prose from Debian packages.

Three steps, each a module with a function and a ``python -m`` entry point: ``corpus``
(:func:`~saeserve.demo.corpus.build_corpus`) cleans and splits the text of the packages in
:data:`~saeserve.demo.sources.SOURCES`; ``tokenizer``
(:func:`~saeserve.demo.tokenizer.train_tokenizer`) learns a byte-level BPE; ``train_lm``
(:func:`~saeserve.demo.train_lm.train_lm`) trains the model. The result is committed in
``data/model`` and loads like any Hugging Face causal LM folder. This module imports
nothing heavy, so naming the folder needs no torch.
"""

from __future__ import annotations

from pathlib import Path

DEMO_MODEL_DIR = Path(__file__).parent / "data" / "model"
"""The committed demo model folder (config.json, model.safetensors, tokenizer.json)."""
