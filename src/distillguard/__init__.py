"""distillguard: an open platform against model distillation."""

__version__ = "0.1.0"
