"""The embedded default world: Northwind Labs' model Aster, trained offline on the Python docs."""

from distillguard.world.build import PRESETS, WorldPaths, build_world, world_paths

__all__ = ["PRESETS", "WorldPaths", "build_world", "world_paths"]
