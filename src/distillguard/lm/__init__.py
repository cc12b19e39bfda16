"""Loading, saving, prompting and training small HF causal LMs on CPU."""

from distillguard.lm.chat import format_example, format_prompt
from distillguard.lm.generate import generate_answers
from distillguard.lm.io import load_model_and_tokenizer, save_model_and_tokenizer
from distillguard.lm.tiny import make_tiny_llama
from distillguard.lm.train import train_causal_lm

__all__ = [
    "format_example",
    "format_prompt",
    "generate_answers",
    "load_model_and_tokenizer",
    "make_tiny_llama",
    "save_model_and_tokenizer",
    "train_causal_lm",
]
