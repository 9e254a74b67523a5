"""APScheduler wiring only; the jobs themselves are service functions."""
