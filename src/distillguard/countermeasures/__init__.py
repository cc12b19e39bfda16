"""Countermeasures: sampling defences that make answers worth less to a distiller (``defences``: the
torch-free specs and registry; ``ads``: anti-distillation sampling with a proxy student)."""
