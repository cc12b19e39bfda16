"""Text helpers shared across packages: prompt pools (:mod:`.prompts`) and text vectors (:mod:`.vectors`)."""
